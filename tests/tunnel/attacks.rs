//! The bad-input suite: each attack a review tried against a running gateway and agent,
//! as a list a reviewer can read. Every case asserts the exact refusal (or the exact
//! thing that must not leak) on real processes over loopback.

use super::harness::*;

fn body(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A caller's identity headers never reach the remote API under the agent's identity:
/// `Authorization` is the agent's own (from its kubeconfig), and `Impersonate-*`,
/// `X-Remote-*`, `X-Forwarded-*` and `Forwarded` are dropped by the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_identity_headers_do_not_reach_the_upstream() {
    let topo = Topology::start(false).await;
    let _agent = topo.agent("a1", "p1").await;
    let mut cmd = topo.curl();
    for header in [
        "Authorization: Bearer the-callers-token",
        "Impersonate-User: system:admin",
        "Impersonate-Group: system:masters",
        "Impersonate-Uid: 0",
        "Impersonate-Extra-Scopes: all",
        "X-Remote-User: admin",
        "X-Remote-Group: system:masters",
        "X-Forwarded-For: 203.0.113.7",
        "X-Forwarded-Host: evil.example.com",
        "Forwarded: for=203.0.113.7",
    ] {
        cmd.args(["-H", header]);
    }
    cmd.arg(topo.proxy_url("k8s", "/identity"));
    let out = curl(cmd).await;
    assert_eq!(body(&out), format!("authorization: Bearer {TOKEN}"));
}

/// The built-in `agent` target says who the agent is and nothing about where it dials
/// or what its routes hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_target_shows_no_configuration() {
    let topo = Topology::start(false).await;
    let _agent = topo.agent("a1", "p1").await;
    let mut cmd = topo.curl();
    cmd.arg(topo.proxy_url("agent", "/"));
    let out = curl(cmd).await;
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys: Vec<&str> = info
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "commit",
            "connected",
            "instance",
            "planeID",
            "planeType",
            "protocol",
            "targets",
            "uptimeSeconds",
            "version"
        ]
    );
    assert!(!body(&out).contains("127.0.0.1"), "{}", body(&out));
}
