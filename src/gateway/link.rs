//! The gateway as a controller in the same process sees it (`controller --with-gateway`):
//! status straight from the hub, and connection changes as they happen.

use std::sync::Arc;

use futures_util::stream::BoxStream;
use futures_util::{FutureExt as _, future::BoxFuture};

use super::Core;
use crate::planes::connection::{
    ConnectionStatus, GatewayLink, Notification, ReplicaTunnels, broadcast_stream,
};
use crate::planes::{CrRef, PlaneKey, PlaneType};

pub(crate) struct LocalLink {
    pub(crate) core: Arc<Core>,
}

impl GatewayLink for LocalLink {
    fn describe(&self) -> String {
        "the gateway in this process".into()
    }

    fn status(
        &self,
        key: &PlaneKey,
        cr: &CrRef,
    ) -> BoxFuture<'static, anyhow::Result<ConnectionStatus>> {
        let mut status = self.core.plane_status(key, Some(cr));
        status.replicas = Some(ReplicaTunnels {
            holding: usize::from(status.connected),
            live: 1,
        });
        async move { Ok(status) }.boxed()
    }

    /// The registry here is the one the controller reads too, so a notification only
    /// re-verifies the plane's agents against it, as the plane API does.
    fn notify(&self, notification: Notification) -> BoxFuture<'static, anyhow::Result<()>> {
        let core = self.core.clone();
        async move {
            let plane_type = PlaneType::parse(&notification.plane_type)
                .ok_or_else(|| anyhow::anyhow!("unknown plane type {}", notification.plane_type))?;
            let key = PlaneKey {
                plane_type,
                plane_id: notification.plane_id,
            };
            if let Some(snapshot) = core.registry.current() {
                core.hub.reverify(&snapshot, Some(&key));
            }
            Ok(())
        }
        .boxed()
    }

    fn changes(&self) -> BoxStream<'static, PlaneKey> {
        broadcast_stream(self.core.hub.subscribe_changes())
    }
}
