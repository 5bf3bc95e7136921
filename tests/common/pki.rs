//! Test certificates made with `openssl`: a CA, a server certificate for given names, and an
//! unrelated CA (for "untrusted issuer" cases); and base64 for LDIF.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::process::run;

/// Base64 (standard alphabet, padded) of `data`, e.g. for LDIF `attr:: value` lines.
pub fn base64(data: impl AsRef<[u8]>) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = data.as_ref();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A test CA, a server certificate it signed for the given subjectAltNames only, and an
/// unrelated CA, valid two days (make them per test run, never cache them). Files in `dir`: `ca.pem`, `other-ca.pem`, `server.pem`, `server.key` (0600).
pub struct TestPki {
    pub ca: PathBuf,
    pub other_ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestPki {
    /// `sans`: the certificate's subjectAltName, e.g. `DNS:localhost,IP:127.0.0.1`.
    pub fn new(dir: &Path, sans: &str) -> TestPki {
        let p = |name: &str| dir.join(name).to_string_lossy().into_owned();
        // `openssl req` making a new P-256 key, then `rest`.
        let new_key_req = |rest: &[&str]| {
            let mut argv = vec![
                "openssl",
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
            ];
            argv.extend_from_slice(rest);
            run(&argv, None).unwrap();
        };
        for (name, cn) in [
            ("ca", "matrix-ldap-sync test CA"),
            ("other-ca", "unrelated CA"),
        ] {
            let (key, pem) = (p(&format!("{name}.key")), p(&format!("{name}.pem")));
            new_key_req(&[
                "-x509",
                "-keyout",
                &key,
                "-out",
                &pem,
                "-days",
                "2",
                "-subj",
                &format!("/CN={cn}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]);
        }
        std::fs::write(
            p("server.ext"),
            format!(
                "subjectAltName={sans}\nbasicConstraints=CA:FALSE\n\
                 keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
            ),
        )
        .unwrap();
        let (key, csr, pem) = (p("server.key"), p("server.csr"), p("server.pem"));
        new_key_req(&[
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            "/CN=matrix-ldap-sync test server",
        ]);
        run(
            &[
                "openssl",
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &p("ca.pem"),
                "-CAkey",
                &p("ca.key"),
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &p("server.ext"),
            ],
            None,
        )
        .unwrap();
        // Servers (Samba) refuse a private key others can read.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        TestPki {
            ca: dir.join("ca.pem"),
            other_ca: dir.join("other-ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        }
    }
}
