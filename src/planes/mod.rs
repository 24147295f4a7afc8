//! The plane model: which remote planes are registered, and which client CA each
//! trusts. Two sources feed the same [`Snapshot`]: a directory of manifests (bare
//! hosts, `--planes-dir`) and the Kubernetes API (the controller issue).

pub mod conditions;
pub mod connection;
pub mod crd;
pub mod directory;
pub mod kubernetes;
pub mod manifest;
pub mod reason;
pub mod registry;
pub mod rollover;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;

pub use crd::PlaneKind;
pub use reason::Reason;
pub use registry::{
    Authorisation, CrRef, PlaneEntry, PlaneKey, PlaneSource, Registry, SecretKeyLocation, Snapshot,
};

/// Why something is not as it should be: a reason and a message naming the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub reason: Reason,
    pub message: String,
}

impl Problem {
    pub fn new(reason: Reason, message: impl Into<String>) -> Problem {
        Problem {
            reason,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// A Secret's data, with `stringData` (which a server never returns, but a manifest
/// file may hold) merged over it.
pub fn secret_data(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut data: BTreeMap<String, Vec<u8>> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    for (k, v) in secret.string_data.iter().flatten() {
        data.insert(k.clone(), v.clone().into_bytes());
    }
    data
}

/// The kinds of remote plane. `workflowplane` is the newer name of the build plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum PlaneType {
    #[value(name = "dataplane")]
    DataPlane,
    #[value(name = "buildplane", alias = "workflowplane")]
    BuildPlane,
    #[value(name = "observabilityplane")]
    ObservabilityPlane,
}

impl PlaneType {
    pub const ALL: [PlaneType; 3] = [
        PlaneType::DataPlane,
        PlaneType::BuildPlane,
        PlaneType::ObservabilityPlane,
    ];

    /// The name used on the wire (`planeType` query, proxy paths, metrics labels).
    pub const fn as_str(self) -> &'static str {
        match self {
            PlaneType::DataPlane => "dataplane",
            PlaneType::BuildPlane => "buildplane",
            PlaneType::ObservabilityPlane => "observabilityplane",
        }
    }

    /// The Kubernetes kind of the plane's custom resource.
    pub fn kind(self) -> &'static str {
        match self {
            PlaneType::DataPlane => "DataPlane",
            PlaneType::BuildPlane => "BuildPlane",
            PlaneType::ObservabilityPlane => "ObservabilityPlane",
        }
    }

    /// Parses a wire name, accepting `workflowplane` and any letter case.
    pub fn parse(name: &str) -> Option<PlaneType> {
        match name.to_ascii_lowercase().as_str() {
            "dataplane" => Some(PlaneType::DataPlane),
            "buildplane" | "workflowplane" => Some(PlaneType::BuildPlane),
            "observabilityplane" => Some(PlaneType::ObservabilityPlane),
            _ => None,
        }
    }
}

impl PlaneType {
    /// The kinds whose CRs serve this plane type, its namespaced kind first.
    pub fn kinds(self) -> impl Iterator<Item = PlaneKind> {
        PlaneKind::ALL
            .into_iter()
            .filter(move |k| k.plane_type() == self)
    }

    /// The kinds, for messages: "DataPlane or ClusterDataPlane".
    pub fn kinds_phrase(self) -> String {
        let kinds: Vec<&str> = self.kinds().map(PlaneKind::as_str).collect();
        match kinds.split_last() {
            Some((last, [])) => last.to_string(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        }
    }
}

impl std::str::FromStr for PlaneType {
    type Err = String;

    fn from_str(name: &str) -> Result<PlaneType, String> {
        PlaneType::parse(name).ok_or_else(|| {
            format!(
                "unknown planeType {name:?}; use dataplane, buildplane (or workflowplane) or observabilityplane"
            )
        })
    }
}

impl std::fmt::Display for PlaneType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A plane type as the operator named it, for the agent's `planeType` on the wire:
/// OpenChoreo's gateway today takes `workflowplane` and no longer `buildplane`, older
/// gateways the other way round, and planelink's either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlaneTypeName {
    pub plane_type: PlaneType,
    /// The spelling sent.
    pub wire: &'static str,
}

impl PlaneTypeName {
    pub const WORKFLOW_PLANE: &str = "workflowplane";

    pub const fn of(plane_type: PlaneType) -> PlaneTypeName {
        PlaneTypeName {
            plane_type,
            wire: plane_type.as_str(),
        }
    }
}

impl clap::ValueEnum for PlaneTypeName {
    fn value_variants<'a>() -> &'a [Self] {
        const NAMES: [PlaneTypeName; 4] = [
            PlaneTypeName::of(PlaneType::DataPlane),
            PlaneTypeName {
                plane_type: PlaneType::BuildPlane,
                wire: PlaneTypeName::WORKFLOW_PLANE,
            },
            PlaneTypeName::of(PlaneType::BuildPlane),
            PlaneTypeName::of(PlaneType::ObservabilityPlane),
        ];
        &NAMES
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.wire))
    }
}
