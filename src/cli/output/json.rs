//! The protobuf JSON that `-o json` prints: the canonical mapping (the field
//! names grpcurl shows, RFC 3339 `Z` timestamps) made from obhostctl's own
//! descriptors, with empty lists and maps put back so `jq` never meets a
//! missing field; the `error` document every failing command ends with; and
//! the streamed document of `observer logs`. One place for it, so that every
//! command's JSON reads the same and a script learns it once.

use std::io::Write;
use std::sync::LazyLock;

use anyhow::Context;
use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MessageDescriptor};

use super::state_name;
use crate::proto::v1 as pb;

/// The descriptors of obhost.v1 (and the testing service), for canonical JSON.
static POOL: LazyLock<Result<DescriptorPool, String>> = LazyLock::new(|| {
    DescriptorPool::decode(crate::proto::ALL_DESCRIPTOR).map_err(|e| e.to_string())
});

/// A message obhostctl prints as JSON, with its full proto name.
pub trait Proto: prost::Message {
    const NAME: &'static str;
}

impl Proto for pb::Step {
    const NAME: &'static str = "obhost.v1.Step";
}
impl Proto for pb::HostInfo {
    const NAME: &'static str = "obhost.v1.HostInfo";
}
impl Proto for pb::ObserverStatus {
    const NAME: &'static str = "obhost.v1.ObserverStatus";
}
impl Proto for pb::TailObserverLogResponse {
    const NAME: &'static str = "obhost.v1.TailObserverLogResponse";
}

/// The canonical proto JSON of `m`: what grpcurl prints, timestamps in UTC
/// with `Z`. Made from the descriptors (prost-reflect), so only fields whose
/// type is google.protobuf.Timestamp are formatted as times; a string that
/// merely looks like a date (a step's message) is left as it is. Repeated and
/// map fields are always present ([] and {}), so `jq '.checks[]'` works on a
/// step without checks.
pub fn proto_json<M: Proto>(m: &M) -> anyhow::Result<serde_json::Value> {
    let pool = POOL
        .as_ref()
        .map_err(|e| anyhow::anyhow!("obhostctl's own proto descriptors do not decode: {e}"))?;
    let desc = pool
        .get_message_by_name(M::NAME)
        .with_context(|| format!("no message {} in obhostctl's descriptors", M::NAME))?;
    let dynamic = DynamicMessage::decode(desc.clone(), m.encode_to_vec().as_slice())
        .with_context(|| format!("cannot re-read a {}", M::NAME))?;
    let mut v = serde_json::to_value(&dynamic)?;
    with_lists(&desc, &mut v);
    Ok(v)
}

/// Puts back the empty repeated and map fields that canonical JSON leaves out,
/// in every message of `v` (not in well-known types, which are strings).
fn with_lists(desc: &MessageDescriptor, v: &mut serde_json::Value) {
    let Some(obj) = v.as_object_mut() else { return };
    if desc.full_name().starts_with("google.protobuf.") {
        return;
    }
    let mut given = std::mem::take(obj);
    for field in desc.fields() {
        let name = field.json_name();
        match given.remove(name) {
            None if field.is_map() => {
                obj.insert(name.to_string(), serde_json::json!({}));
            }
            None if field.is_list() => {
                obj.insert(name.to_string(), serde_json::json!([]));
            }
            None => {}
            Some(mut inner) => {
                if let Kind::Message(m) = field.kind() {
                    if field.is_list() {
                        if let Some(items) = inner.as_array_mut() {
                            for item in items {
                                with_lists(&m, item);
                            }
                        }
                    } else if !field.is_map() {
                        with_lists(&m, &mut inner);
                    }
                }
                obj.insert(name.to_string(), inner);
            }
        }
    }
    // Nothing should be left; whatever is stays, rather than vanish.
    obj.extend(given);
}

/// Prints one JSON document (pretty) or one JSON line.
pub fn print_json(value: &serde_json::Value, pretty: bool) -> anyhow::Result<()> {
    let text = if pretty {
        serde_json::to_string_pretty(value)?
    } else {
        serde_json::to_string(value)?
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    Ok(())
}

/// What `-o json` prints on stdout when a command fails, whatever failed: a
/// usage error, an unreachable daemon, an RPC's status or a step that did not
/// succeed. Scripts test `.error` and read `.error.code`.
pub fn error_json(code: &str, message: &str, exit_status: u8) -> serde_json::Value {
    serde_json::json!({
        "error": {"code": code, "message": message, "exit_status": exit_status}
    })
}

/// A step that ended badly as the `error` of a JSON document: its error code
/// (PROCESS_EXITED, ...), else its state.
pub fn step_error_json(s: &pb::Step) -> serde_json::Value {
    let (code, message) = match &s.error {
        Some(e) => (e.code.clone(), e.message.clone()),
        None => (state_name(s.state()).to_string(), s.message.clone()),
    };
    error_json(
        &code,
        &format!("step '{}' is {}: {message}", s.id, state_name(s.state())),
        1,
    )
}

/// The JSON of a list of steps (also part of the demo's document).
pub fn step_list_json(
    steps: &[pb::Step],
    next_page_token: &str,
) -> anyhow::Result<serde_json::Value> {
    let items = steps
        .iter()
        .map(proto_json)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut doc = serde_json::json!({ "steps": items });
    if !next_page_token.is_empty() {
        doc["nextPageToken"] = next_page_token.into();
    }
    Ok(doc)
}

/// `observer logs -o json` without --follow: one document,
/// `{"lines": [...]}` (a TailObserverLogResponse holding every line), written
/// as the messages come so up to 10,000 lines of 64 KiB never sit in memory.
/// Pretty-printed like every other document.
pub struct LinesDocument {
    empty: bool,
}

impl LinesDocument {
    #[allow(clippy::new_without_default)]
    pub fn new() -> LinesDocument {
        LinesDocument { empty: true }
    }

    pub fn add(&mut self, lines: &[String]) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        for l in lines {
            let sep = if self.empty {
                "{\n  \"lines\": [\n"
            } else {
                ",\n"
            };
            write!(out, "{sep}    {}", serde_json::to_string(l)?)?;
            self.empty = false;
        }
        out.flush()?;
        Ok(())
    }

    pub fn end(self) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        if self.empty {
            writeln!(out, "{{\n  \"lines\": []\n}}")?;
        } else {
            writeln!(out, "\n  ]\n}}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(seconds: i64, nanos: i32) -> Option<pbjson_types::Timestamp> {
        Some(pbjson_types::Timestamp { seconds, nanos })
    }

    #[test]
    fn timestamps_end_in_z_and_look_alike_strings_are_left_alone() {
        let s = pb::Step {
            id: "a".into(),
            created_at: ts(1_700_000_000, 0),
            started_at: ts(1_700_000_001, 500_000_000),
            message: "retry at 2023-11-14T22:13:20+00:00".into(),
            ..Default::default()
        };
        let v = proto_json(&s).unwrap();
        assert_eq!(v["createdAt"], "2023-11-14T22:13:20Z");
        assert_eq!(v["startedAt"], "2023-11-14T22:13:21.500Z");
        assert_eq!(v["message"], "retry at 2023-11-14T22:13:20+00:00");
        // Lists and maps are there even when empty.
        assert_eq!(v["checks"], serde_json::json!([]));
        assert_eq!(v["outputs"], serde_json::json!({}));
        // The rest is the mapping pbjson printed before.
        let old = serde_json::to_value(&s).unwrap();
        assert_eq!(v["id"], old["id"]);
        assert_eq!(v["state"], old["state"]);
    }

    #[test]
    fn nested_lists_are_filled_too() {
        let s = pb::Step {
            id: "a".into(),
            error: Some(pb::StepError {
                code: "X".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let v = proto_json(&s).unwrap();
        assert_eq!(v["error"]["logTail"], serde_json::json!([]));
        let h = proto_json(&pb::HostInfo::default()).unwrap();
        assert_eq!(h["disks"], serde_json::json!([]));
        let o = proto_json(&pb::ObserverStatus::default()).unwrap();
        assert_eq!(o["listeningPorts"], serde_json::json!([]));
        assert_eq!(o["command"], serde_json::json!([]));
    }

    #[test]
    fn an_empty_list_is_an_empty_array() {
        assert_eq!(
            step_list_json(&[], "").unwrap(),
            serde_json::json!({"steps": []})
        );
    }
}
