//! The events the app pushes to the UI, and the sink that emits engine
//! updates as those events.
//!
//! Events are only ever *applied* by the UI on top of a snapshot it fetched
//! after registering its listeners (an event emitted before that is lost),
//! so every payload is a whole object, never a diff.

use galaxy::monitor::LiveSink;
use galaxy::{Galaxy, InstanceView};
use tauri::{AppHandle, Emitter, Runtime};

/// Payload: an [`InstanceView`], the whole current view of one instance.
pub const INSTANCE_UPDATED: &str = "instance-updated";
/// Payload: a [`Galaxy`] just written by a completed instance.
pub const GALAXY_ADDED: &str = "galaxy-added";
/// Payload: none. Updates were lost; the UI re-reads everything.
pub const RESYNC: &str = "resync";
/// Payload: a [`sync::SyncStatus`] (cloud reachability).
pub const SYNC_STATUS: &str = "sync-status";
/// Payload: a [`sync::SyncerStatus`] (the sync loop: phase, pending
/// changes, last sync, progress, notices).
pub const SYNC_LOOP: &str = "sync-loop";
/// Payload: a [`Galaxy`] added or changed by sync or a rename.
pub const GALAXY_UPSERTED: &str = "galaxy-upserted";
/// Payload: `{ "rowKey" }` of a galaxy deleted here or on another device.
pub const GALAXY_REMOVED: &str = "galaxy-removed";
/// Payload: `{ "instanceId", "runtimeStatus" }` of a `Galaxy_Create` this
/// app started in the cloud, at each of its states.
pub const CLOUD_INSTANCE: &str = "cloud-instance";
/// Payload: a message for the player.
pub const NOTICE: &str = "notice";
/// Payload: none. A second launch on the same data brought this window to
/// the front.
pub const FOCUS_REQUESTED: &str = "focus-requested";
/// Payload: a message. The local store could not be opened.
pub const FATAL: &str = "fatal";

/// Emits monitor notifications to every window.
pub struct UiSink<R: Runtime>(pub AppHandle<R>);

impl<R: Runtime> LiveSink for UiSink<R> {
    fn instance(&self, view: &InstanceView) {
        if let Err(e) = self.0.emit(INSTANCE_UPDATED, view) {
            tracing::warn!(error = %e, "emitting an instance update failed");
        }
    }

    fn galaxy(&self, galaxy: &Galaxy) {
        if let Err(e) = self.0.emit(GALAXY_ADDED, galaxy) {
            tracing::warn!(error = %e, "emitting a galaxy failed");
        }
    }

    fn resync(&self) {
        let _ = self.0.emit(RESYNC, ());
    }
}
