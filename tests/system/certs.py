"""Throw-away X.509 material for the TLS system tests (not a test itself).

make_certs(directory) runs the `openssl` command line to write, into
`directory`:

  ca.pem / ca-key.pem          "Hadron Test CA", the CA the broker trusts
  server.pem / server-key.pem  server certificate for localhost, 127.0.0.1
                               and ::1, signed by the test CA
  alice.pem / alice-key.pem    client certificate, subject CN=alice, signed
                               by the test CA
  rogue-ca.pem                 an unrelated CA ("Rogue CA")
  mallory.pem / mallory-key.pem client certificate CN=mallory signed by the
                               rogue CA, so the broker must refuse it

and returns a Certs object whose attributes are those paths.  Keys are
unencrypted EC P-256 (quick to make); certificates are valid for two days.
"""

import os
import subprocess

# A private openssl config, so the result does not depend on the system's
# openssl.cnf (its defaults and extensions differ between distributions).
_OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1,IP:::1
[client_ext]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
"""


class Certs:
    """Paths of the files make_certs wrote."""

    def __init__(self, directory):
        p = lambda name: os.path.join(directory, name)
        self.dir = directory
        self.ca, self.ca_key = p("ca.pem"), p("ca-key.pem")
        self.server, self.server_key = p("server.pem"), p("server-key.pem")
        self.alice, self.alice_key = p("alice.pem"), p("alice-key.pem")
        self.rogue_ca, self.rogue_ca_key = p("rogue-ca.pem"), p("rogue-ca-key.pem")
        self.mallory, self.mallory_key = p("mallory.pem"), p("mallory-key.pem")


def _openssl(cnf, *args):
    env = dict(os.environ, OPENSSL_CONF=cnf)
    p = subprocess.run(["openssl"] + list(args), capture_output=True, text=True, env=env, timeout=60)
    if p.returncode != 0:
        raise RuntimeError("openssl %s failed:\n%s" % (" ".join(args), p.stderr))


def _key(cnf, path):
    _openssl(cnf, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)


def _ca(cnf, cert, key, subject):
    _key(cnf, key)
    _openssl(cnf, "req", "-config", cnf, "-x509", "-new", "-key", key, "-subj", subject,
             "-days", "2", "-extensions", "ca_ext", "-out", cert)


def _leaf(cnf, directory, cert, key, subject, ca, ca_key, ext):
    _key(cnf, key)
    csr = cert + ".csr"
    _openssl(cnf, "req", "-config", cnf, "-new", "-key", key, "-subj", subject, "-out", csr)
    _openssl(cnf, "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-set_serial",
             str(int.from_bytes(os.urandom(8), "big")), "-days", "2", "-extfile", cnf,
             "-extensions", ext, "-out", cert)
    os.unlink(csr)


def make_certs(directory):
    """Write the CA, server and client certificates into `directory`."""
    os.makedirs(directory, exist_ok=True)
    cnf = os.path.join(directory, "openssl.cnf")
    with open(cnf, "w") as f:
        f.write(_OPENSSL_CNF)
    c = Certs(directory)
    _ca(cnf, c.ca, c.ca_key, "/CN=Hadron Test CA")
    _leaf(cnf, directory, c.server, c.server_key, "/CN=localhost", c.ca, c.ca_key, "server_ext")
    _leaf(cnf, directory, c.alice, c.alice_key, "/CN=alice", c.ca, c.ca_key, "client_ext")
    _ca(cnf, c.rogue_ca, c.rogue_ca_key, "/CN=Rogue CA")
    _leaf(cnf, directory, c.mallory, c.mallory_key, "/CN=mallory", c.rogue_ca, c.rogue_ca_key,
          "client_ext")
    return c


if __name__ == "__main__":
    import sys
    out = sys.argv[1] if len(sys.argv) > 1 else "."
    c = make_certs(out)
    print("certificates written to %s" % c.dir)
