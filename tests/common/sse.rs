//! A Server-Sent Events reader for galaxy-cloud's live streams.

use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use serde_json::Value;

/// Longest wait for the next event before failing.
const WAIT: Duration = Duration::from_secs(30);

/// A Server-Sent Events reader.
pub struct Sse {
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Vec<u8>>> + Send>>,
    buf: String,
}

impl Sse {
    /// Reads the events of a streaming response.
    pub fn new(response: reqwest::Response) -> Self {
        Self {
            body: Box::pin(response.bytes_stream().map(|c| c.map(|b| b.to_vec()))),
            buf: String::new(),
        }
    }

    /// The next event (name, JSON data); `None` when the stream ends.
    pub async fn next(&mut self) -> Option<(String, Value)> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut event = String::from("message");
                let mut data = Vec::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.trim_start().to_string());
                    }
                }
                if data.is_empty() {
                    continue; // a comment (subscribed, keep-alive)
                }
                let value = serde_json::from_str(&data.join("\n")).expect("event data is JSON");
                return Some((event, value));
            }
            let chunk = tokio::time::timeout(WAIT, self.body.next())
                .await
                .expect("no event in time")?;
            self.buf
                .push_str(&String::from_utf8_lossy(&chunk.expect("stream chunk")));
        }
    }

    /// The next event about instance `id`.
    pub async fn next_for(&mut self, id: &str) -> (String, Value) {
        loop {
            let (event, data) = self.next().await.expect("stream ended");
            if data["instanceId"] == id {
                return (event, data);
            }
        }
    }

    /// Waits until every one of `ids` reached `status` (in any order).
    pub async fn all_reach(&mut self, ids: &[String], status: &str) {
        let mut left: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
        while !left.is_empty() {
            let (_, data) = self.next().await.expect("stream ended");
            if data["runtimeStatus"] == status {
                left.remove(data["instanceId"].as_str().unwrap_or_default());
            }
        }
    }

    /// Events about `id` up to and including the first with `status`.
    pub async fn until(&mut self, id: &str, status: &str) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let (_, data) = self.next_for(id).await;
            let done = data["runtimeStatus"] == status;
            out.push(data);
            if done {
                return out;
            }
        }
    }
}
