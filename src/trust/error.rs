//! The trust module's one error type. Every message names what is wrong and the fix.

use std::path::PathBuf;

/// Why a certificate, key or chain was rejected.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {inner}", path.display())]
    InFile {
        path: PathBuf,
        inner: Box<TrustError>,
    },
    #[error("the input is empty; expected PEM text starting with -----BEGIN CERTIFICATE-----")]
    Empty,
    #[error(
        "not a certificate or key: expected PEM text starting with -----BEGIN CERTIFICATE----- \
         (or -----BEGIN PRIVATE KEY----- for a key), base64 of such text, or DER"
    )]
    NotPem,
    #[error("malformed PEM ({0}); copy the whole block again, including the BEGIN and END lines")]
    BadPem(String),
    #[error("this holds {found}, not {expected}")]
    WrongContent {
        found: String,
        expected: &'static str,
    },
    #[error("no certificate found; expected a -----BEGIN CERTIFICATE----- block")]
    NoCertificate,
    #[error(
        "no private key found; expected -----BEGIN PRIVATE KEY-----, \
         -----BEGIN RSA PRIVATE KEY----- or -----BEGIN EC PRIVATE KEY-----"
    )]
    NoPrivateKey,
    #[error("this holds {0} private keys; give a file with exactly one")]
    SeveralPrivateKeys(usize),
    #[error(
        "the private key is encrypted; planelink needs it unencrypted: \
         `openssl pkey -in KEY -out tls.key` (then chmod 600 tls.key)"
    )]
    EncryptedKey,
    #[error("the certificate cannot be parsed as X.509: {0}")]
    BadCertificate(String),
    #[error(
        "the private key does not belong to the certificate {subject}; give the tls.key issued with this tls.crt"
    )]
    KeyMismatch { subject: String },

    #[error(
        "certificate {subject} is not valid before {not_before} (it is now {now}); \
         check this host's clock, or wait until then"
    )]
    NotYetValid {
        subject: String,
        not_before: String,
        now: String,
    },
    #[error("certificate {subject} expired at {not_after} (it is now {now}); {fix}")]
    Expired {
        subject: String,
        not_after: String,
        now: String,
        fix: &'static str,
    },
    #[error(
        "the trusted CA file holds {subject}, a leaf certificate (CA:FALSE), not a CA; \
         this is tls.crt, the leaf; register ca.crt, the CA that issued it ({issuer})"
    )]
    LeafAsCa { subject: String, issuer: String },
    #[error(
        "certificate {subject} is not the pinned self-signed certificate the plane registered \
         ({pinned}); register the agent's current certificate (ca.crt of Secret cluster-agent-tls), \
         or let its CA rollover carry the renewal"
    )]
    NotPinned { subject: String, pinned: String },
    #[error(
        "certificate {subject} was issued by {issuer}, which is not the trusted CA ({trusted}); \
         {fix}"
    )]
    UntrustedIssuer {
        subject: String,
        issuer: String,
        trusted: String,
        fix: &'static str,
    },
    #[error(
        "certificate {subject} is a CA, not a leaf; present the leaf (tls.crt) and keep the CA (ca.crt) for the verifying side"
    )]
    CaAsLeaf { subject: String },
    #[error(
        "certificate {subject} lacks the {usage} extended key usage (it has: {present}); \
         re-issue it with {usage} in its usages"
    )]
    MissingEku {
        subject: String,
        usage: &'static str,
        present: String,
    },
    #[error("x509: certificate is valid for {valid_for}, not {host}; {fix}")]
    HostNotInSans {
        host: String,
        valid_for: String,
        fix: String,
    },
    #[error(
        "x509: cannot validate certificate for {ip} because it doesn't contain any IP SANs; {fix}"
    )]
    NoIpSans { ip: String, fix: String },
    #[error("chain verification failed: {0}")]
    Chain(String),
    #[error("cannot issue certificate: {0}")]
    Issue(String),
}

impl TrustError {
    /// Attaches the file the error came from, once.
    pub fn in_file(self, path: &std::path::Path) -> TrustError {
        match self {
            e @ (TrustError::Read { .. } | TrustError::InFile { .. }) => e,
            inner => TrustError::InFile {
                path: path.to_path_buf(),
                inner: Box::new(inner),
            },
        }
    }

    /// The error without the file wrapper, for matching.
    pub fn root(&self) -> &TrustError {
        match self {
            TrustError::InFile { inner, .. } => inner.root(),
            other => other,
        }
    }
}
