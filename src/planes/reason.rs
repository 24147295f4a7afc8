//! Every condition reason planelink writes or reports, in one place: the controller's
//! conditions, the registry's refusals and the README's table all come from [`Reason`].

/// Why a plane's condition is what it is. The string form is the condition `reason`;
/// [`Reason::meaning`] documents each one (and is the README's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Reason {
    Ready,
    SpecUndecodable,
    ClientCAMissing,
    ClientCAUnparseable,
    ClientCAIsLeaf,
    ClientCAExpired,
    ClientCAIsGatewayCA,
    SecretNotFound,
    SecretOutsideNamespace,
    PlaneClaimedElsewhere,
    SecretKeyNotFound,
    SecretNotReadable,
    KubernetesClusterInvalid,
    NoConnectionMode,
    ObservabilityPlaneNotFound,
    DeletionBlocked,
    GatewaySpecInvalid,
    AgentConnected,
    AgentNotConnected,
    GatewayUnreachable,
    GatewayNotConfigured,
    APIServerReachable,
    APIServerUnreachable,
    AwaitingConnection,
    GatewayAPIAvailable,
    GatewayAPIMissing,
    GatewayAPIUnknown,
    CertificatesCurrent,
    ClientCAExpiringSoon,
    AgentCertExpiringSoon,
    GatewayCertExpiringSoon,
    ClientCARotationPending,
}

/// What to do about each certificate nearing expiry: in the condition's message and the
/// README's table.
pub const CLIENT_CA_RENEWAL: &str = "the plane's `clientCA` expires soon: issue the agent a new CA \
     and certificate, register the new `ca.crt` next to the old one (a bundle in `clientCA`), and \
     remove the old one once the agents use the new certificate";
pub const AGENT_CERT_RENEWAL: &str = "an agent's client certificate expires soon: renew it (cert-manager \
     renews Secret `cluster-agent-tls` itself; bare hosts: `planelink register certs agent`); the \
     agent replaces its tunnels with the renewed files without a restart";
pub const GATEWAY_CERT_RENEWAL: &str = "the gateway's serving certificate expires soon: renew it \
     (cert-manager renews Secret `cluster-gateway-tls` itself; bare hosts: `planelink register \
     certs gateway`); the gateway serves the renewed files without a restart";

impl Reason {
    pub const ALL: [Reason; 32] = [
        Reason::Ready,
        Reason::ClientCAMissing,
        Reason::ClientCAUnparseable,
        Reason::ClientCAIsLeaf,
        Reason::ClientCAExpired,
        Reason::ClientCAIsGatewayCA,
        Reason::SpecUndecodable,
        Reason::SecretNotFound,
        Reason::SecretOutsideNamespace,
        Reason::PlaneClaimedElsewhere,
        Reason::SecretKeyNotFound,
        Reason::SecretNotReadable,
        Reason::KubernetesClusterInvalid,
        Reason::NoConnectionMode,
        Reason::ObservabilityPlaneNotFound,
        Reason::DeletionBlocked,
        Reason::GatewaySpecInvalid,
        Reason::AgentConnected,
        Reason::AgentNotConnected,
        Reason::GatewayUnreachable,
        Reason::GatewayNotConfigured,
        Reason::APIServerReachable,
        Reason::APIServerUnreachable,
        Reason::AwaitingConnection,
        Reason::GatewayAPIAvailable,
        Reason::GatewayAPIMissing,
        Reason::GatewayAPIUnknown,
        Reason::CertificatesCurrent,
        Reason::ClientCAExpiringSoon,
        Reason::AgentCertExpiringSoon,
        Reason::GatewayCertExpiringSoon,
        Reason::ClientCARotationPending,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Ready => "Ready",
            Reason::SpecUndecodable => "SpecUndecodable",
            Reason::ClientCAMissing => "ClientCAMissing",
            Reason::ClientCAUnparseable => "ClientCAUnparseable",
            Reason::ClientCAIsLeaf => "ClientCAIsLeaf",
            Reason::ClientCAExpired => "ClientCAExpired",
            Reason::ClientCAIsGatewayCA => "ClientCAIsGatewayCA",
            Reason::SecretNotFound => "SecretNotFound",
            Reason::SecretOutsideNamespace => "SecretOutsideNamespace",
            Reason::PlaneClaimedElsewhere => "PlaneClaimedElsewhere",
            Reason::SecretKeyNotFound => "SecretKeyNotFound",
            Reason::SecretNotReadable => "SecretNotReadable",
            Reason::KubernetesClusterInvalid => "KubernetesClusterInvalid",
            Reason::NoConnectionMode => "NoConnectionMode",
            Reason::ObservabilityPlaneNotFound => "ObservabilityPlaneNotFound",
            Reason::DeletionBlocked => "DeletionBlocked",
            Reason::GatewaySpecInvalid => "GatewaySpecInvalid",
            Reason::AgentConnected => "AgentConnected",
            Reason::AgentNotConnected => "AgentNotConnected",
            Reason::GatewayUnreachable => "GatewayUnreachable",
            Reason::GatewayNotConfigured => "GatewayNotConfigured",
            Reason::APIServerReachable => "APIServerReachable",
            Reason::APIServerUnreachable => "APIServerUnreachable",
            Reason::AwaitingConnection => "AwaitingConnection",
            Reason::GatewayAPIAvailable => "GatewayAPIAvailable",
            Reason::GatewayAPIMissing => "GatewayAPIMissing",
            Reason::GatewayAPIUnknown => "GatewayAPIUnknown",
            Reason::CertificatesCurrent => "CertificatesCurrent",
            Reason::ClientCAExpiringSoon => "ClientCAExpiringSoon",
            Reason::AgentCertExpiringSoon => "AgentCertExpiringSoon",
            Reason::GatewayCertExpiringSoon => "GatewayCertExpiringSoon",
            Reason::ClientCARotationPending => "ClientCARotationPending",
        }
    }

    /// The condition this reason is written to.
    pub fn condition(self) -> &'static str {
        match self {
            Reason::AgentConnected
            | Reason::AgentNotConnected
            | Reason::GatewayUnreachable
            | Reason::GatewayNotConfigured
            | Reason::APIServerReachable
            | Reason::APIServerUnreachable => "Connected",
            Reason::AwaitingConnection
            | Reason::GatewayAPIAvailable
            | Reason::GatewayAPIMissing
            | Reason::GatewayAPIUnknown
            | Reason::GatewaySpecInvalid => "GatewayProvisioned",
            Reason::CertificatesCurrent
            | Reason::ClientCAExpiringSoon
            | Reason::AgentCertExpiringSoon
            | Reason::GatewayCertExpiringSoon
            | Reason::ClientCARotationPending => "CertificatesCurrent",
            _ => "Ready",
        }
    }

    /// What the reason means and what to do, as the README's table says it.
    pub fn meaning(self) -> &'static str {
        match self {
            Reason::Ready => "connected, trusted and configured",
            Reason::ClientCAMissing => {
                "no `clientCA` (or one with neither value nor Secret): register the agent's `ca.crt`"
            }
            Reason::ClientCAUnparseable => {
                "`clientCA` holds no readable certificate: give the PEM of the agent's `ca.crt`"
            }
            Reason::ClientCAIsLeaf => {
                "`clientCA` holds a leaf: register `ca.crt` of Secret `cluster-agent-tls`, not `tls.crt`"
            }
            Reason::ClientCAExpired => {
                "every CA in `clientCA` has expired: register the agent's current `ca.crt`"
            }
            Reason::ClientCAIsGatewayCA => {
                "`clientCA` is the gateway's own server CA: register the agent's CA from the remote plane"
            }
            Reason::SecretNotFound => "a referenced Secret does not exist: create it",
            Reason::SecretOutsideNamespace => {
                "a namespaced plane names a Secret of another namespace, which planelink never reads: \
                 put the Secret in the plane's namespace"
            }
            Reason::PlaneClaimedElsewhere => {
                "another namespace's CR holds this planeID's agent (or the agent's --serve-planes \
                 leaves this CR out): the agent is not given it; list the CR in the agent's \
                 --serve-planes, or use a cluster-scoped plane"
            }
            Reason::SecretKeyNotFound => {
                "a referenced Secret lacks the key: fix the reference's `key`"
            }
            Reason::SecretNotReadable => {
                "a referenced Secret cannot be read: let the controller get Secrets there"
            }
            Reason::KubernetesClusterInvalid => {
                "`spec.kubernetesCluster` cannot make a client: fix the field the message names"
            }
            Reason::NoConnectionMode => {
                "neither `spec.clusterAgent` nor `spec.kubernetesCluster`: add one"
            }
            Reason::ObservabilityPlaneNotFound => {
                "`spec.observabilityPlaneRef` names a missing ObservabilityPlane: create it or fix the name"
            }
            Reason::DeletionBlocked => {
                "Environments still reference this DataPlane: delete them or move them to another"
            }
            Reason::GatewaySpecInvalid => {
                "`spec.gateway` has an invalid host or Gateway name, or the same HTTP and HTTPS port"
            }
            Reason::SpecUndecodable => {
                "planelink cannot read the CR (the Event names the field): fix that field; the other planes are served"
            }
            Reason::AgentConnected => "at least one trusted agent is connected",
            Reason::AgentNotConnected => {
                "no trusted agent is connected: read the agent's log in the remote cluster"
            }
            Reason::GatewayUnreachable => {
                "the gateway's plane API does not answer: check `--gateway-url` and its certificates"
            }
            Reason::GatewayNotConfigured => {
                "no gateway URL to reach agent-mode planes: give `--gateway-url`"
            }
            Reason::APIServerReachable => "direct mode: the API server answers `/version`",
            Reason::APIServerUnreachable => {
                "direct mode: the API server does not answer `/version` (address, CA, credentials)"
            }
            Reason::AwaitingConnection => {
                "the remote cluster is probed for the Gateway API once connected"
            }
            Reason::GatewayAPIAvailable => "the remote cluster serves `gateway.networking.k8s.io`",
            Reason::GatewayAPIMissing => {
                "the remote cluster lacks `gateway.networking.k8s.io`: install the Gateway API CRDs there"
            }
            Reason::GatewayAPIUnknown => "the remote cluster's API groups cannot be listed",
            Reason::CertificatesCurrent => {
                "the plane's client CA, its agents' certificates and the gateway's serving \
                 certificate are all valid beyond the controller's `--expiry-warning`"
            }
            Reason::ClientCAExpiringSoon => CLIENT_CA_RENEWAL,
            Reason::AgentCertExpiringSoon => AGENT_CERT_RENEWAL,
            Reason::GatewayCertExpiringSoon => GATEWAY_CERT_RENEWAL,
            Reason::ClientCARotationPending => {
                "an agent proposes the CA of its renewed certificate and the plane does not take \
                 proposals itself: run the `planelink register rotate` command the message names, \
                 or annotate the plane `planelink.dev/ca-rotation=agent`"
            }
        }
    }

    /// The README's table of reasons, generated so that it cannot drift.
    pub fn markdown_table() -> String {
        let mut out = String::from("| condition | reason | meaning and fix |\n|---|---|---|\n");
        for reason in Reason::ALL {
            out.push_str(&format!(
                "| {} | `{}` | {} |\n",
                reason.condition(),
                reason.as_str(),
                reason.meaning()
            ));
        }
        out
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_match_the_variants() {
        let mut names: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        for reason in Reason::ALL {
            assert_eq!(format!("{reason:?}"), reason.as_str());
        }
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Reason::ALL.len());
    }

    /// The README's reason table is this enum's; `UPDATE_README=1` rewrites it.
    #[test]
    fn readme_table_is_generated() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
        let readme = std::fs::read_to_string(path).expect("README.md");
        let (begin, end) = ("<!-- reasons:begin -->\n", "<!-- reasons:end -->");
        let start = readme.find(begin).expect("README has the reasons markers") + begin.len();
        let stop = readme[start..].find(end).expect("end marker") + start;
        let table = Reason::markdown_table();
        if readme[start..stop] != table {
            if std::env::var_os("UPDATE_README").is_some() {
                let updated = format!("{}{table}{}", &readme[..start], &readme[stop..]);
                std::fs::write(path, updated).expect("write README.md");
            } else {
                panic!(
                    "README.md's reason table differs from Reason::markdown_table(); run with UPDATE_README=1"
                );
            }
        }
    }
}
