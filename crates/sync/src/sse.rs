//! A server-sent events parser: bytes in, events out. Pure, so the live
//! channel's framing is tested on canned input.
//!
//! Follows the HTML spec's event stream rules as far as sync needs them:
//! `event:` and `data:` fields (several `data:` lines join with `\n`),
//! comments (`:`) ignored, an empty line ends an event, CR, LF and CRLF
//! all end lines, a line split across chunks waits for its end.

/// One event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// `event:` (`message` when absent).
    pub event: String,
    /// The `data:` lines.
    pub data: String,
}

/// Collects chunks and hands out complete events.
#[derive(Debug, Default)]
pub struct Parser {
    line: Vec<u8>,
    last_was_cr: bool,
    event: Option<String>,
    data: Option<String>,
}

impl Parser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds a chunk; returns the events it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<Event> {
        let mut out = Vec::new();
        for &b in chunk {
            match b {
                b'\n' if self.last_was_cr => self.last_was_cr = false,
                b'\n' | b'\r' => {
                    self.last_was_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(e) = self.line_done(&line) {
                        out.push(e);
                    }
                }
                _ => {
                    self.last_was_cr = false;
                    self.line.push(b);
                }
            }
        }
        out
    }

    fn line_done(&mut self, line: &[u8]) -> Option<Event> {
        if line.is_empty() {
            let data = self.data.take();
            let event = self.event.take();
            return data.map(|data| Event {
                event: event.unwrap_or_else(|| "message".into()),
                data,
            });
        }
        let line = String::from_utf8_lossy(line);
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_ref(), ""),
        };
        match field {
            "event" => self.event = Some(value.to_string()),
            "data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_anywhere_come_out_whole() {
        let text = b": hello\n\nevent: poke\ndata: {\"version\":3}\n\nevent: poke\r\ndata: a\r\ndata: b\r\n\r\n";
        for split in 0..text.len() {
            let mut p = Parser::new();
            let mut events = p.feed(&text[..split]);
            events.extend(p.feed(&text[split..]));
            assert_eq!(
                events,
                vec![
                    Event {
                        event: "poke".into(),
                        data: "{\"version\":3}".into()
                    },
                    Event {
                        event: "poke".into(),
                        data: "a\nb".into()
                    },
                ],
                "split at {split}"
            );
        }
    }

    #[test]
    fn an_event_without_a_name_is_a_message_and_one_without_data_is_nothing() {
        let mut p = Parser::new();
        assert_eq!(
            p.feed(b"data:x\n\nevent: ping\n\n"),
            vec![Event {
                event: "message".into(),
                data: "x".into()
            }]
        );
    }
}
