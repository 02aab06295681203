"""An identity provider for tests: signing keys, hand-made tokens, and a JWK Set served over loopback."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import threading
from dataclasses import dataclass
from typing import Any

import jwt
import jwt.algorithms
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa


@dataclass
class SigningKey:
    """A provider's private key: it signs tokens and publishes its public half as a JWK."""

    alg: str  # RS256, ES256 or EdDSA (or PS256, with an RSA key whose JWK says so)
    kid: str | None
    private: Any

    @classmethod
    def new(cls, alg: str, kid: str | None) -> SigningKey:
        private: Any
        if alg in ("RS256", "PS256"):
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif alg == "ES256":
            private = ec.generate_private_key(ec.SECP256R1())
        else:
            private = ed25519.Ed25519PrivateKey.generate()
        return cls(alg, kid, private)

    def jwk(self) -> dict[str, Any]:
        family = {"RS256": "RSA", "PS256": "RSA", "ES256": "EC", "EdDSA": "OKP"}[self.alg]
        maker: Any = {"RSA": jwt.algorithms.RSAAlgorithm, "EC": jwt.algorithms.ECAlgorithm,
                      "OKP": jwt.algorithms.OKPAlgorithm}[family]
        out: dict[str, Any] = json.loads(maker.to_jwk(self.private.public_key()))
        out["use"] = "sig"
        if self.alg == "PS256":
            out["alg"] = "PS256"
        if self.kid is not None:
            out["kid"] = self.kid
        return out

    def public_pem(self) -> bytes:
        return bytes(self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo,
        ))

    def sign(self, claims: dict[str, Any], *, alg: str | None = None, headers: dict[str, Any] | None = None) -> str:
        """A token signed with this key, its header naming the key's kid unless ``headers`` says
        otherwise (``{"kid": None}``: no kid)."""
        merged = {"kid": self.kid, **(headers or {})}
        return jwt.encode(claims, self.private, algorithm=alg or self.alg,
                          headers={k: v for k, v in merged.items() if v is not None})


def hand_signed(header: dict[str, Any], claims: dict[str, Any], hmac_key: bytes | None) -> str:
    """A JWS built by hand: HMAC-SHA256 with ``hmac_key`` (any bytes, a public key's PEM among them,
    which PyJWT itself refuses to use), or no signature at all (``alg: none``)."""
    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    head = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    signature = b64(hmac.new(hmac_key, head.encode(), hashlib.sha256).digest()) if hmac_key is not None else ""
    return head + "." + signature


class JwksServer:
    """A real HTTP server on 127.0.0.1 publishing a JWK Set at ``/.well-known/jwks.json``, as an
    identity provider does. A test changes what it answers (``publish``, ``answer``) and reads how
    often it was asked (``fetches``)."""

    PATH = "/.well-known/jwks.json"

    def __init__(self) -> None:
        self.status = 200
        self.body = b'{"keys": []}'
        self.fetches = 0
        self._lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # chunked answers need it

            def do_GET(self) -> None:
                with server._lock:
                    if self.path == server.PATH:
                        server.fetches += 1
                    status, body = (server.status, server.body) if self.path == server.PATH else (404, b"{}")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                if not server.chunked:
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    for i in range(0, len(body), 16384):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(body[i:i + 16384]), body[i:i + 16384]))
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:
                    pass  # the client stopped reading: what a cap does

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.chunked = False  # without Content-Length, as a streaming server answers
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}{self.PATH}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def publish(self, *keys: SigningKey) -> None:
        self.answer(200, json.dumps({"keys": [k.jwk() for k in keys]}).encode())

    def answer(self, status: int, body: bytes) -> None:
        with self._lock:
            self.status, self.body = status, body

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
