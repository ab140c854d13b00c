//! Printing results: aligned tables for people, `--json` for programs.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::Value;

/// How one item of a list command shows: a table row under fixed columns,
/// and its `--json` form.
pub trait Render {
    fn columns() -> &'static [&'static str];
    fn row(&self) -> Vec<String>;
    fn json(&self) -> Value;
}

/// Prints a list: a JSON array with `--json` (an item whose form is `null`
/// has nothing to show and is left out), else a table.
pub fn print_list<T: Render>(items: &[T], as_json: bool) {
    if as_json {
        let v = items.iter().map(T::json).filter(|v| !v.is_null());
        json(&Value::Array(v.collect()));
    } else {
        print_table(items);
    }
}

/// Prints a list as a table whatever the format asked for.
pub fn print_table<T: Render>(items: &[T]) {
    let rows: Vec<Vec<String>> = items.iter().map(T::row).collect();
    table(T::columns(), &rows);
}

/// Prints rows under a header with columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

pub fn json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

/// RFC 3339 in UTC, to the second; empty for an unset time.
pub fn time(ts: &Option<prost_types::Timestamp>) -> String {
    match ts {
        Some(t) if t.seconds > 0 => {
            let at = UNIX_EPOCH + Duration::from_secs(t.seconds as u64);
            humantime::format_rfc3339_seconds(at).to_string()
        }
        _ => String::new(),
    }
}

pub fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_owned()
    }
}
