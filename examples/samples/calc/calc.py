"""A tiny calculator: the sample project devcycle's CI workflow builds,
tests and reviews."""


def add(a, b):
    return a + b


def subtract(a, b):
    return a - b


def multiply(a, b):
    return a * b


def divide(a, b):
    if b == 0:
        raise ZeroDivisionError("division by zero")
    return a / b


def mean(values):
    if not values:
        raise ValueError("mean of nothing")
    return sum(values) / len(values)
