//! Certificates renewed under load: the agent's files swapped the way the kubelet swaps
//! a mounted Secret, and the gateway's serving certificate rewritten, each while callers
//! keep sending requests through the tunnel; not one may fail.

use std::time::Duration;

use planelink::planes::{PlaneKey, PlaneType};
use planelink::trust::issue::{self, FileKind, Issued, LeafOptions};

use crate::common::mount_secret;
use crate::harness::*;

fn agent_secret<'a>(ca: &'a Issued, leaf: &'a Issued) -> [(&'static str, &'a str); 3] {
    [
        ("ca.crt", ca.cert_pem.as_str()),
        ("tls.crt", leaf.cert_pem.as_str()),
        ("tls.key", leaf.key_pem()),
    ]
}

fn p1() -> PlaneKey {
    PlaneKey {
        plane_type: PlaneType::DataPlane,
        plane_id: "p1".into(),
    }
}

/// The `certificateNotAfter` of each agent the gateway lists for p1.
fn agent_expiries(topo: &Topology) -> Vec<String> {
    topo.gateway
        .status(&p1(), None)
        .agents
        .iter()
        .map(|a| {
            a.certificate_not_after
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_default()
        })
        .collect()
}

/// Waits (15 s at most) until `done` holds.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let waited = async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(15), waited)
        .await
        .unwrap_or_else(|_| panic!("not within 15 s: {what}"));
}

/// A topology, the CA of identity a1, and a1's first certificate in a directory mounted
/// like a Secret.
async fn mounted_agent_files() -> (Topology, Issued, std::path::PathBuf, Issued) {
    let topo = Topology::start(false).await;
    let ca = Issued::load_ca(&topo.pki.dir.join("a1")).unwrap();
    let mounted = topo.pki.dir.join("mounted");
    std::fs::create_dir_all(&mounted).unwrap();
    let first = issue::issue_leaf(&ca, &LeafOptions::client("a1")).unwrap();
    mount_secret(&mounted, 1, &agent_secret(&ca, &first));
    (topo, ca, mounted, first)
}

/// The agent's certificate renewed under the same CA, its Secret swapped as the kubelet
/// does: the agent dials a tunnel with the new certificate, the gateway moves requests
/// to it and closes the old one once drained, and no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_agent_certificate_replaces_the_tunnel_without_a_failed_request() {
    let (topo, ca, mounted, _) = mounted_agent_files().await;
    let _agent = topo.agent("mounted", "p1").await;
    let before = agent_expiries(&topo);
    assert_eq!(before.len(), 1, "{before:?}");

    let callers = RequestLoop::start(&topo, 4);
    callers.advance(200).await;
    let renewed = issue::issue_leaf(
        &ca,
        &LeafOptions::client("a1").valid_for(Duration::from_secs(200 * 86400)),
    )
    .unwrap();
    mount_secret(&mounted, 2, &agent_secret(&ca, &renewed));
    until(
        "the gateway lists only the agent's renewed certificate",
        || {
            let now = agent_expiries(&topo);
            now.len() == 1 && now != before
        },
    )
    .await;
    callers.advance(200).await;
    callers.finish_without_failures().await;
    // The replaced tunnel is closed: one tunnel, the renewed one.
    topo.wait_for_agents_exactly("p1", 1).await;
    let metrics = topo.metrics().await;
    for series in [
        "planelink_gateway_agents_connected{plane_type=\"dataplane\",plane_id=\"p1\"} 1\n",
        "planelink_gateway_tunnels_replaced_total 1\n",
    ] {
        assert!(metrics.contains(series), "{series} missing: {metrics}");
    }
}

/// A renewal whose files do not fit together (a key that is not the certificate's) is
/// not used: the agent keeps its tunnel on the current files and says why, and takes
/// the set that fixes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_renewal_keeps_the_working_certificate() {
    let (topo, ca, mounted, first) = mounted_agent_files().await;
    let agent = topo.agent("mounted", "p1").await;
    let before = agent_expiries(&topo);
    let callers = RequestLoop::start(&topo, 2);
    callers.advance(100).await;
    let other = issue::issue_leaf(&ca, &LeafOptions::client("a1")).unwrap();
    let mismatched = [
        ("ca.crt", ca.cert_pem.as_str()),
        ("tls.crt", first.cert_pem.as_str()),
        ("tls.key", other.key_pem()),
    ];
    mount_secret(&mounted, 2, &mismatched);
    // Three reload periods: the broken set has been read and refused.
    tokio::time::sleep(planelink::trust::tls::RELOAD_INTERVAL * 3).await;
    callers.advance(100).await;
    assert!(agent.is_connected());
    assert_eq!(agent_expiries(&topo), before);
    // The broken set is not parsed again while it stays, but the fixed one is taken.
    let fixed = issue::issue_leaf(
        &ca,
        &LeafOptions::client("a1").valid_for(Duration::from_secs(200 * 86400)),
    )
    .unwrap();
    mount_secret(&mounted, 3, &agent_secret(&ca, &fixed));
    until("the gateway lists the fixed certificate", || {
        let now = agent_expiries(&topo);
        now.len() == 1 && now != before
    })
    .await;
    callers.advance(100).await;
    callers.finish_without_failures().await;
}

/// The DER of the certificate a TLS listener at `port` presents now.
async fn served_certificate(topo: &Topology, port: u16) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in planelink::trust::load_certificates(&topo.pki.dir.join("gateway/ca.crt")).unwrap() {
        roots.add(cert).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(planelink::trust::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// The gateway's serving certificate rewritten on disk: both listeners present the new
/// one to new connections within seconds, tunnels and callers already connected carry
/// on, a new agent connects, and no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_gateway_certificate_is_served_without_a_failed_request() {
    let topo = Topology::start(false).await;
    let _agent = topo.agent("a1", "p1").await;
    let public = topo.gateway.public_addr.port();
    let old = served_certificate(&topo, public).await;
    let callers = RequestLoop::start(&topo, 4);
    callers.advance(200).await;

    let expected = renew_serving_certificate(&topo, &topo.pki.gateway_ca);
    assert_ne!(old, expected);
    until_served(&topo, &expected).await;
    // A second agent of the plane dials the renewed certificate.
    let _second = topo.agent("a1", "p1").await;
    callers.advance(200).await;
    callers.finish_without_failures().await;
}

/// Dials as identity `name` for plane p1 (the agent's own three steps), offering
/// `proposal`; what the gateway answered.
async fn dial_proposing(
    topo: &Topology,
    name: &str,
    proposal: planelink::trust::rollover::Proposal,
) -> Result<planelink::tunnel::dial::Dialled, planelink::tunnel::dial::DialError> {
    use planelink::tunnel::dial;
    let config = topo.agent_config(name, "p1");
    let identity = config.tls.as_ref().unwrap().load().unwrap();
    let (host, port) = dial::host_port(&config.dial_url);
    let tcp = dial::connect(&host, port, dial::STEP_TIMEOUT).await?;
    let (tls, _) = dial::tls(tcp, &host, &identity, b"http/1.1", dial::STEP_TIMEOUT).await?;
    let introduction = dial::Introduction {
        proposal: Some(proposal),
        ..dial::Introduction::default()
    };
    dial::upgrade(tls, &config.dial_url, &introduction, dial::STEP_TIMEOUT).await
}

/// A proposal is taken only from an agent the gateway authorised, only for the CRs it is
/// authorised for, and only when the renewed certificate verifies against the proposed
/// CA; everything else is refused and counted by reason (and logged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_proposals_are_taken_only_from_authorised_agents_for_their_own_crs() {
    use planelink::planes::CrRef;
    use planelink::trust::issue::CaOptions;
    use planelink::trust::rollover::Proposal;
    let topo = Topology::start(false).await;
    // A second DataPlane of planeID p1, trusting another CA: a1 is not authorised for it.
    let (_, other_ca) = agent_identity(&topo.pki.dir, "other");
    write(
        &topo.planes.join("dp2.yaml"),
        &dataplane("dp2", "p1", &other_ca),
    );
    let _other = topo.agent("other", "p1").await;

    let der = |pem: &str| planelink::trust::parse_certificates(pem.as_bytes()).unwrap();
    let new_ca = issue::new_ca(&CaOptions::agent("renewed")).unwrap();
    let renewed = issue::issue_leaf(&new_ca, &LeafOptions::client("a1")).unwrap();
    let proposal = Proposal {
        cas: der(&new_ca.cert_pem),
        chain: der(&renewed.cert_pem),
    };
    let _tunnel = dial_proposing(&topo, "a1", proposal.clone())
        .await
        .expect("a1 is trusted by dp1");
    let pending = |cr: &str| {
        topo.gateway
            .status(&p1(), Some(&CrRef::new("org", cr)))
            .ca_proposal
    };
    let taken = pending("dp1").expect("the proposal is pending for dp1");
    assert_eq!(taken.fingerprints, proposal.fingerprints());
    assert_eq!(taken.ca_bundle, proposal.ca_pem());
    assert_eq!(
        pending("dp2"),
        None,
        "a1 proposed for a CR that does not trust it"
    );

    // An agent no CR trusts: its dial is refused and its proposal not taken.
    let (_, _stranger_ca) = agent_identity(&topo.pki.dir, "stranger");
    match dial_proposing(&topo, "stranger", proposal.clone()).await {
        Err(planelink::tunnel::dial::DialError::Refused { status: 401, .. }) => {}
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("a stranger was let in"),
    }
    // A renewed certificate that the proposed CA did not issue: refused.
    let forged = Proposal {
        cas: der(&other_ca),
        chain: der(&renewed.cert_pem),
    };
    let _tunnel = dial_proposing(&topo, "a1", forged)
        .await
        .expect("a1 itself is still trusted");
    assert_eq!(
        pending("dp1").unwrap().fingerprints,
        proposal.fingerprints()
    );
    let metrics = topo.metrics().await;
    for result in ["accepted", "unauthorised", "invalid"] {
        let series = format!("planelink_gateway_ca_proposals_total{{result=\"{result}\"}} 1\n");
        assert!(metrics.contains(&series), "{series} missing: {metrics}");
    }
}

/// Writes a serving certificate for 127.0.0.1 from `ca` over the gateway's files, the
/// key first (each by rename); returns its DER.
fn renew_serving_certificate(topo: &Topology, ca: &Issued) -> Vec<u8> {
    let renewed = issue::issue_leaf(
        ca,
        &LeafOptions::server(
            "gateway",
            vec!["localhost".into()],
            vec!["127.0.0.1".parse().unwrap()],
        ),
    )
    .unwrap();
    let dir = topo.pki.dir.join("gateway");
    issue::write_file(
        &dir.join("tls.key.new"),
        renewed.key_pem(),
        FileKind::Secret,
    )
    .unwrap();
    issue::write_file(
        &dir.join("tls.crt.new"),
        &renewed.cert_pem,
        FileKind::Public,
    )
    .unwrap();
    std::fs::rename(dir.join("tls.key.new"), dir.join("tls.key")).unwrap();
    std::fs::rename(dir.join("tls.crt.new"), dir.join("tls.crt")).unwrap();
    planelink::trust::parse_certificates(renewed.cert_pem.as_bytes()).unwrap()[0].to_vec()
}

/// Waits (10 s at most) until both gateway listeners present `expected`.
async fn until_served(topo: &Topology, expected: &[u8]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for port in [
        topo.gateway.public_addr.port(),
        topo.gateway.internal_addr.port(),
    ] {
        while served_certificate(topo, port).await != expected {
            assert!(
                tokio::time::Instant::now() < deadline,
                "port {port} still serves the old certificate after 10 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The gateway's own CA rolled over with an overlap, as the README describes: agents
/// (`--server-ca`) and callers trust the old and the new CA, the gateway switches to a
/// serving certificate from the new one, and the old CA is dropped from the bundle (the
/// agents replace their tunnels with ones that trust only the new CA). New agents connect
/// at each step and no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_ca_rollover_with_overlap_loses_no_request() {
    let topo = Topology::start(false).await;
    let bundle = topo.pki.dir.join("gateway/ca.crt");
    let new_ca = issue::new_ca(&planelink::trust::issue::CaOptions::gateway()).unwrap();
    // Step 1: trust both (the ConfigMap cluster-gateway-ca of each plane, the callers' CA).
    write(
        &bundle,
        &format!("{}{}", topo.pki.gateway_ca.cert_pem, new_ca.cert_pem),
    );
    let _agent = topo.agent("a1", "p1").await;
    let callers = RequestLoop::start(&topo, 4);
    callers.advance(200).await;
    // Step 2: the gateway serves a certificate from the new CA.
    let served = renew_serving_certificate(&topo, &new_ca);
    until_served(&topo, &served).await;
    let _second = topo.agent("a1", "p1").await;
    callers.advance(200).await;
    // Step 3: the old CA is dropped; the agents reload and replace their tunnels.
    write(&bundle, &new_ca.cert_pem);
    let replaced = async {
        while !topo
            .metrics()
            .await
            .contains("planelink_gateway_tunnels_replaced_total 2\n")
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(15), replaced)
        .await
        .expect("both agents replace their tunnels within 15 s");
    let _third = topo.agent("a1", "p1").await;
    callers.advance(200).await;
    callers.finish_without_failures().await;
}
