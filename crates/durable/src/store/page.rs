//! One page of an instance listing, bounded twice: by the caller's page
//! size and by the payload bytes (inputs, outputs, custom statuses) it
//! carries, so that `top=1000` over instances with megabyte inputs cannot
//! make a store hold a gigabyte for one request. Both stores read rows in
//! listing order and stop as soon as the builder is full; the rows they
//! did not read are the next page's.

use crate::types::{InstancePage, InstanceStatus};

/// Most payload bytes one listing page carries (as JSON text). A page
/// stops after the instance that crosses it, so it holds at most this
/// plus one instance's payloads; the caller gets a continuation token
/// for the rest.
pub const PAGE_PAYLOAD_BYTES: usize = 16 * 1024 * 1024;

/// Collects a page from rows read in listing order, bounded by a count
/// and a byte budget (the stores ask for `size + 1` rows: one more than
/// fits means there is a next page). Generic, so that other listings
/// (the event router's dead letters) bound their pages the same way.
pub struct PageBuilder<T> {
    size: usize,
    budget: usize,
    bytes: usize,
    items: Vec<T>,
    more: bool,
}

impl<T> PageBuilder<T> {
    /// A page of at most `size` items and about `budget` bytes.
    pub fn new(size: usize, budget: usize) -> Self {
        Self {
            size,
            budget,
            bytes: 0,
            items: Vec::new(),
            more: false,
        }
    }

    /// Adds the next row, of `bytes` payload; false once the page is full
    /// (read no more rows).
    pub fn push(&mut self, item: T, bytes: usize) -> bool {
        if self.items.len() == self.size {
            self.more = true;
            return false;
        }
        self.bytes += bytes;
        self.items.push(item);
        if self.bytes >= self.budget {
            // Whether more rows match is unknown without reading one; the
            // next page may then be empty.
            self.more = true;
            return false;
        }
        true
    }

    /// The items, and whether more may follow the last one.
    pub fn finish(self) -> (Vec<T>, bool) {
        (self.items, self.more)
    }
}

impl PageBuilder<InstanceStatus> {
    /// Adds an instance, counting its payloads.
    pub(crate) fn push_instance(&mut self, status: InstanceStatus) -> bool {
        let bytes = payload_bytes(&status);
        self.push(status, bytes)
    }

    /// The page, with a token made by `token` from its last instance when
    /// more may follow.
    pub(crate) fn instance_page(self, token: impl Fn(&InstanceStatus) -> String) -> InstancePage {
        let (instances, more) = self.finish();
        let continuation = if more {
            instances.last().map(token)
        } else {
            None
        };
        InstancePage {
            instances,
            continuation,
        }
    }
}

/// The JSON text length of an instance's input, output and custom status,
/// counted without building the text.
fn payload_bytes(s: &InstanceStatus) -> usize {
    let mut counter = Counter(0);
    let values = [Some(&s.input), s.output.as_ref(), s.custom_status.as_ref()];
    for v in values.into_iter().flatten() {
        // Writing to a counter cannot fail.
        let _ = serde_json::to_writer(&mut counter, v);
    }
    counter.0
}

struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{InstanceId, RuntimeStatus, Timestamp};

    fn status(n: usize, input_bytes: usize) -> InstanceStatus {
        InstanceStatus {
            instance_id: InstanceId::new(format!("i{n}")).unwrap(),
            name: "O".into(),
            execution_id: "e".into(),
            runtime_status: RuntimeStatus::Completed,
            input: serde_json::Value::String("x".repeat(input_bytes)),
            output: None,
            custom_status: None,
            failure: None,
            created_at: Timestamp::default(),
            last_updated_at: Timestamp::default(),
            parent_instance_id: None,
            history_events: 0,
            history_bytes: 0,
            history: None,
        }
    }

    fn build(rows: Vec<InstanceStatus>, size: usize, budget: usize) -> InstancePage {
        let mut page = PageBuilder::new(size, budget);
        for row in rows {
            if !page.push_instance(row) {
                break;
            }
        }
        page.instance_page(|s| s.instance_id.to_string())
    }

    #[test]
    fn a_page_stops_at_its_size_and_says_so_only_when_more_rows_exist() {
        let page = build((0..4).map(|n| status(n, 1)).collect(), 3, 1 << 20);
        assert_eq!(page.instances.len(), 3);
        assert_eq!(page.continuation.as_deref(), Some("i2"));
        let page = build((0..3).map(|n| status(n, 1)).collect(), 3, 1 << 20);
        assert_eq!(page.instances.len(), 3);
        assert_eq!(page.continuation, None);
    }

    #[test]
    fn a_page_stops_after_the_row_that_crosses_the_byte_budget() {
        // Each input is 102 bytes of JSON ("x" * 100 quoted).
        let page = build((0..10).map(|n| status(n, 100)).collect(), 1000, 250);
        assert_eq!(page.instances.len(), 3);
        assert_eq!(page.continuation.as_deref(), Some("i2"));
        // One huge row still makes a page of one, never an empty page.
        let page = build(vec![status(0, 1000), status(1, 1)], 1000, 250);
        assert_eq!(page.instances.len(), 1);
        assert_eq!(page.continuation.as_deref(), Some("i0"));
    }
}
