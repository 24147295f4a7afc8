//! Issuing the CAs and certificates planelink needs, named like cert-manager's
//! Secrets (`ca.crt`, `tls.crt`, `tls.key`, and the CA key as `ca.key`).
//!
//! ECDSA P-256 throughout: small, fast, and accepted by every TLS stack involved.

use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;

use super::{TrustError, Usage};

/// Default lifetime of a CA: ten years, like cert-manager's usual self-signed CA setups.
pub const DEFAULT_CA_DAYS: u32 = 3650;
/// Default lifetime of a leaf: one year.
pub const DEFAULT_LEAF_DAYS: u32 = 365;
/// Leaves start slightly in the past so that small clock skew between hosts does not
/// make a fresh certificate "not yet valid".
const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// A validity window.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Window {
    /// From a few minutes ago until `lifetime` from now.
    pub fn from_now(lifetime: Duration) -> Window {
        let now = SystemTime::now();
        Window {
            not_before: now - BACKDATE,
            not_after: now + lifetime,
        }
    }

    pub fn days(days: u32) -> Window {
        Window::from_now(Duration::from_secs(u64::from(days) * 86_400))
    }
}

#[derive(Debug, Clone)]
pub struct CaOptions {
    pub common_name: String,
    pub organization: String,
    pub window: Window,
}

impl CaOptions {
    /// The control plane's CA, which signs the gateway's serving certificate.
    pub fn gateway() -> CaOptions {
        CaOptions {
            common_name: "planelink cluster-gateway CA".into(),
            organization: "planelink".into(),
            window: Window::days(DEFAULT_CA_DAYS),
        }
    }

    /// The CA of the gateway's internal API, which signs its callers' client certificates.
    pub fn internal() -> CaOptions {
        CaOptions {
            common_name: "planelink cluster-gateway internal CA".into(),
            organization: "planelink".into(),
            window: Window::days(DEFAULT_CA_DAYS),
        }
    }

    /// A remote plane's own self-signed CA, which signs its agent's client certificate.
    pub fn agent(plane_id: &str) -> CaOptions {
        CaOptions {
            common_name: format!("planelink cluster-agent CA {plane_id}"),
            organization: "planelink".into(),
            window: Window::days(DEFAULT_CA_DAYS),
        }
    }

    pub fn valid_for(mut self, lifetime: Duration) -> CaOptions {
        self.window = Window::from_now(lifetime);
        self
    }

    pub fn window(mut self, window: Window) -> CaOptions {
        self.window = window;
        self
    }
}

#[derive(Debug, Clone)]
pub struct LeafOptions {
    pub common_name: String,
    /// Names that go into DNS SANs verbatim (an IP here is a mistake, kept possible on
    /// purpose so that diagnostics can be tested against it).
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    /// Extended key usages; empty writes no EKU extension at all.
    pub usages: Vec<Usage>,
    pub window: Window,
}

impl LeafOptions {
    /// A serving certificate (serverAuth) for the gateway.
    pub fn server(
        common_name: &str,
        dns_names: Vec<String>,
        ip_addresses: Vec<IpAddr>,
    ) -> LeafOptions {
        LeafOptions {
            common_name: common_name.into(),
            dns_names,
            ip_addresses,
            usages: vec![Usage::ServerAuth],
            window: Window::days(DEFAULT_LEAF_DAYS),
        }
    }

    /// A client certificate (clientAuth) for an agent.
    pub fn client(common_name: &str) -> LeafOptions {
        LeafOptions {
            common_name: common_name.into(),
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            usages: vec![Usage::ClientAuth],
            window: Window::days(DEFAULT_LEAF_DAYS),
        }
    }

    pub fn valid_for(mut self, lifetime: Duration) -> LeafOptions {
        self.window = Window::from_now(lifetime);
        self
    }

    pub fn window(mut self, window: Window) -> LeafOptions {
        self.window = window;
        self
    }

    pub fn usages(mut self, usages: Vec<Usage>) -> LeafOptions {
        self.usages = usages;
        self
    }
}

/// A PEM key held in memory; `Debug` hides it.
#[derive(Clone)]
pub struct KeyPem(String);

impl std::fmt::Debug for KeyPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyPem(<redacted>)")
    }
}

/// A certificate with its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    key_pem: KeyPem,
}

impl Issued {
    pub fn new(cert_pem: String, key_pem: String) -> Issued {
        Issued {
            cert_pem,
            key_pem: KeyPem(key_pem),
        }
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem.0
    }

    pub fn cert_der(&self) -> Result<CertificateDer<'static>, TrustError> {
        let mut certs = super::parse_certificates(self.cert_pem.as_bytes())?;
        Ok(certs.remove(0))
    }

    /// Loads a CA from `ca.crt` and `ca.key` in `dir`.
    pub fn load_ca(dir: &Path) -> Result<Issued, TrustError> {
        let cert_path = dir.join("ca.crt");
        let key_path = dir.join("ca.key");
        let cert = String::from_utf8_lossy(&super::pem::read_file(&cert_path)?).into_owned();
        let key = String::from_utf8_lossy(&super::pem::read_file(&key_path)?).into_owned();
        let der = super::parse_certificates(cert.as_bytes()).map_err(|e| e.in_file(&cert_path))?;
        let info = super::CertInfo::from_der(&der[0]).map_err(|e| e.in_file(&cert_path))?;
        if !info.can_issue() {
            return Err(TrustError::LeafAsCa {
                subject: info.subject,
                issuer: info.issuer,
            }
            .in_file(&cert_path));
        }
        Ok(Issued::new(cert, key))
    }
}

/// Creates a new self-signed CA.
pub fn new_ca(opts: &CaOptions) -> Result<Issued, TrustError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(issue_err)?;
    let params = ca_params(opts);
    let cert = params.self_signed(&key).map_err(issue_err)?;
    Ok(Issued::new(cert.pem(), key.serialize_pem()))
}

/// Issues a leaf certificate signed by `ca`.
pub fn issue_leaf(ca: &Issued, opts: &LeafOptions) -> Result<Issued, TrustError> {
    let ca_key = KeyPair::from_pem(ca.key_pem()).map_err(|e| {
        TrustError::Issue(format!(
            "the CA key cannot be used ({e}); it must be an unencrypted PKCS#8 key \
             (convert with `openssl pkcs8 -topk8 -nocrypt -in ca.key -out ca.key.new`)"
        ))
    })?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).map_err(issue_err)?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(issue_err)?;
    let mut params = leaf_params(opts, "planelink")?;
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer).map_err(issue_err)?;
    Ok(Issued::new(cert.pem(), key.serialize_pem()))
}

/// A self-signed end-entity certificate, as cert-manager's `selfSigned` issuer writes
/// the agent certificates of OpenChoreo's charts (`isCA: false`, O=OpenChoreo): a pinned
/// identity, never an issuer.
pub fn self_signed_leaf(opts: &LeafOptions) -> Result<Issued, TrustError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(issue_err)?;
    let cert = leaf_params(opts, "OpenChoreo")?
        .self_signed(&key)
        .map_err(issue_err)?;
    Ok(Issued::new(cert.pem(), key.serialize_pem()))
}

fn leaf_params(opts: &LeafOptions, organization: &str) -> Result<CertificateParams, TrustError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(&opts.common_name, organization);
    params.not_before = opts.window.not_before.into();
    params.not_after = opts.window.not_after.into();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = opts
        .usages
        .iter()
        .map(|u| match u {
            Usage::ServerAuth => ExtendedKeyUsagePurpose::ServerAuth,
            Usage::ClientAuth => ExtendedKeyUsagePurpose::ClientAuth,
        })
        .collect();
    for dns in &opts.dns_names {
        let ia5 = dns
            .clone()
            .try_into()
            .map_err(|e| TrustError::Issue(format!("invalid DNS name {dns:?}: {e}")))?;
        params.subject_alt_names.push(SanType::DnsName(ia5));
    }
    for ip in &opts.ip_addresses {
        params.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    Ok(params)
}

fn ca_params(opts: &CaOptions) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(&opts.common_name, &opts.organization);
    params.not_before = opts.window.not_before.into();
    params.not_after = opts.window.not_after.into();
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn name(common_name: &str, organization: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, organization);
    dn.push(DnType::CommonName, common_name);
    dn
}

fn issue_err(e: rcgen::Error) -> TrustError {
    TrustError::Issue(e.to_string())
}

/// Whether a file holds secret material, which decides its mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Public,
    Secret,
}

/// Writes a file atomically (temp file + rename) so a watcher never sees half of it;
/// secrets get mode 0600 from the moment they exist.
pub fn write_file(path: &Path, contents: &str, kind: FileKind) -> Result<(), TrustError> {
    let write_err = |source| TrustError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(write_err)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp: PathBuf = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(match kind {
            FileKind::Secret => 0o600,
            FileKind::Public => 0o644,
        });
    }
    let result = (|| {
        let mut file = options.open(&tmp)?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(write_err)
}

/// Writes a CA and a leaf it issued as `ca.crt`, `ca.key` (when given), `tls.crt`, `tls.key`.
/// Returns the paths written.
pub fn write_bundle(
    dir: &Path,
    ca: &Issued,
    ca_key: bool,
    leaf: &Issued,
) -> Result<Vec<PathBuf>, TrustError> {
    let mut files: Vec<(&str, &str, FileKind)> = vec![("ca.crt", &ca.cert_pem, FileKind::Public)];
    if ca_key {
        files.push(("ca.key", ca.key_pem(), FileKind::Secret));
    }
    files.push(("tls.crt", &leaf.cert_pem, FileKind::Public));
    files.push(("tls.key", leaf.key_pem(), FileKind::Secret));
    let mut written = Vec::new();
    for (name, contents, kind) in files {
        let path = dir.join(name);
        write_file(&path, contents, kind)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_written_0600() {
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca(&CaOptions::agent("p")).unwrap();
        let leaf = issue_leaf(&ca, &LeafOptions::client("agent")).unwrap();
        let written = write_bundle(dir.path(), &ca, true, &leaf).unwrap();
        assert_eq!(written.len(), 4);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = |n: &str| {
                std::fs::metadata(dir.path().join(n))
                    .unwrap()
                    .permissions()
                    .mode()
                    & 0o777
            };
            assert_eq!(mode("tls.key"), 0o600);
            assert_eq!(mode("ca.key"), 0o600);
            assert_eq!(mode("tls.crt"), 0o644);
        }
        let reloaded = Issued::load_ca(dir.path()).unwrap();
        assert_eq!(reloaded.cert_pem, ca.cert_pem);
    }

    #[test]
    fn loading_a_leaf_as_ca_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca(&CaOptions::agent("p")).unwrap();
        let leaf = issue_leaf(&ca, &LeafOptions::client("agent")).unwrap();
        write_file(&dir.path().join("ca.crt"), &leaf.cert_pem, FileKind::Public).unwrap();
        write_file(&dir.path().join("ca.key"), leaf.key_pem(), FileKind::Secret).unwrap();
        let err = Issued::load_ca(dir.path()).unwrap_err();
        assert!(matches!(err.root(), TrustError::LeafAsCa { .. }), "{err}");
    }
}
