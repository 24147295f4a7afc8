//! The plane model: which remote planes are registered, and which client CA each
//! trusts. Two sources feed the same [`Snapshot`]: a directory of manifests (bare
//! hosts, `--planes-dir`) and the Kubernetes API (the controller issue).

pub mod connection;
pub mod crd;
pub mod directory;
pub mod kubernetes;
pub mod manifest;
pub mod registry;

pub use registry::{
    Authorisation, CaProblem, CaProblemKind, CrRef, PlaneEntry, PlaneKey, PlaneSource, Registry,
    Snapshot,
};

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
    pub fn as_str(self) -> &'static str {
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

impl std::fmt::Display for PlaneType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
