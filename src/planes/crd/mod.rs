//! The custom resources of group `openchoreo.dev/v1alpha1`: the plane kinds (one table,
//! `kinds`) and Environment, with the fields of the reference docs. Both spellings
//! DESIGN.md lists are accepted (`clusterAgent` / `agent`, `secretKeyRef` / `secretRef`);
//! `planelink controller crds` prints the CRDs generated from these types (`schema`).

mod builder;
mod environment;
mod fields;
mod kinds;
mod schema;
mod status;
mod values;

pub use builder::PlaneBuilder;
pub use environment::{DataPlaneRef, Environment, EnvironmentGateway, EnvironmentSpec};
pub use fields::{
    BuildPlaneFields, CommonSpec, DataPlaneFields, ObservabilityPlaneFields, check_plane_id,
    is_dns_subdomain,
};
pub use kinds::{
    AnyPlane, BuildPlane, BuildPlaneSpec, ClusterDataPlane, ClusterDataPlaneSpec,
    ClusterObservabilityPlane, ClusterObservabilityPlaneSpec, ClusterWorkflowPlane,
    ClusterWorkflowPlaneSpec, DEFAULT_NAMESPACE, DataPlane, DataPlaneSpec, ForEachKind,
    ObservabilityPlane, ObservabilityPlaneSpec, PlaneKind, PlaneResource, WorkflowPlane,
    WorkflowPlaneSpec, namespaced_api,
};
pub use schema::{crds, crds_yaml};
pub use status::{AgentConnectionStatus, ConnectedAgent, MAX_LISTED_AGENTS, PlaneStatus};
pub use values::*;
