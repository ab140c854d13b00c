#!/usr/bin/env python3
"""Writes a new gateway token-signing key to stdout: Ed25519 in PKCS#8 v2 DER
(seed and public key), the format the gateway reads (ring refuses the v1
keys `openssl genpkey` writes). Needs the `cryptography` package.

    scripts/deploy_signing_key.py > signing-key.p8
    kubectl -n devcycle create secret generic devcycle-gateway-signing-key --from-file=signing-key.p8
"""
import sys

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

key = Ed25519PrivateKey.generate()
seed = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
# RFC 8410 OneAsymmetricKey v2: version 1, Ed25519, the seed, [1] the public key.
der = (bytes.fromhex("3051020101300506032b657004220420") + seed + bytes.fromhex("812100") + public)
assert len(der) == 83
sys.stdout.buffer.write(der)
