//! Sample orchestrations, registered with `--samples`, so the management
//! API can be tried (and tested end to end) on instances that stay live or
//! fail on demand; `Galaxy_Create` finishes in milliseconds and never fails.

use durable::{ActivityContext, OrchestrationContext, Registry, TaskError};
use serde_json::Value;

/// Waits for an external event named [`APPROVAL_EVENT`] and returns its
/// payload. Sets the custom status `"waiting for Approval"` first.
pub const WAIT_FOR_EVENT: &str = "Sample_WaitForEvent";
/// The event [`WAIT_FOR_EVENT`] waits for.
pub const APPROVAL_EVENT: &str = "Approval";
/// Calls an activity that always fails, so the instance ends Failed (and a
/// rewind runs the activity again, which fails again).
pub const FAIL: &str = "Sample_Fail";
/// The activity of [`FAIL`].
pub const FAIL_ACTIVITY: &str = "Sample_FailActivity";

async fn wait_for_event(ctx: OrchestrationContext, _input: Value) -> Result<Value, TaskError> {
    ctx.set_custom_status(format!("waiting for {APPROVAL_EVENT}"));
    ctx.wait_for_event::<Value>(APPROVAL_EVENT).await
}

async fn fail(ctx: OrchestrationContext, input: Value) -> Result<Value, TaskError> {
    ctx.call_activity::<Value>(FAIL_ACTIVITY, input).await
}

/// Adds the sample orchestrations and their activity to `registry`.
pub fn register(registry: Registry) -> Registry {
    registry
        .orchestration(WAIT_FOR_EVENT, wait_for_event)
        .orchestration(FAIL, fail)
        .activity(
            FAIL_ACTIVITY,
            |_: ActivityContext, input: Value| async move {
                Err::<Value, _>(format!("{FAIL_ACTIVITY} fails on purpose (input {input})"))
            },
        )
}
