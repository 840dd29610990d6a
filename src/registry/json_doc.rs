//! A registry document laid out over its bytes (top-level members, and the items of its
//! `agents` member, as borrowed spans), and its rendering as Python's `json.dump(indent=2)`
//! streamed item by item with some items and members replaced: an edit parses only what it
//! looks at, and no `Value` of a whole registry is built.

use super::pyjson::{newline_indent, write_string, write_value};
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::io::Write;

/// The member laid out item by item: the agent list (an array in task registries, an
/// object keyed by id in the global one).
pub const LIST_KEY: &str = "agents";

/// One registry document, borrowed from its bytes.
pub struct Doc<'a> {
    /// Top-level members in order; a repeated key keeps its first position and its last
    /// value, as Python's `json.load` (and serde_json's ordered map) do.
    pub members: Vec<(Cow<'a, str>, &'a RawValue)>,
    /// The items of `agents` when it is an array or an object.
    pub list: Option<List<'a>>,
}

/// The items of the list member.
pub struct List<'a> {
    /// Its index in `members`.
    pub member: usize,
    /// An object (items have keys, deduplicated like members) rather than an array.
    pub object: bool,
    pub items: Vec<(Option<Cow<'a, str>>, &'a RawValue)>,
}

#[derive(Debug, thiserror::Error)]
pub enum DocError {
    #[error("top level is not a JSON object")]
    NotObject,
    #[error("{0}")]
    Json(#[from] serde_json::Error),
}

impl<'a> Doc<'a> {
    /// Lays out `bytes` (one JSON object, trailing whitespace allowed), checking all of it.
    pub fn parse(bytes: &'a [u8]) -> Result<Doc<'a>, DocError> {
        // Checked first: with `arbitrary_precision` a bare number reaches a visitor as a map.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            serde_json::from_slice::<IgnoredAny>(bytes)?;
            return Err(DocError::NotObject);
        }
        let Top(members) = serde_json::from_slice::<Top<'a>>(bytes)?;
        let members = dedupe(members.ok_or(DocError::NotObject)?);
        let list = match members.iter().position(|(k, _)| k == LIST_KEY) {
            Some(member) => {
                let raw: &'a str = members[member].1.get();
                match raw.as_bytes().first() {
                    Some(b'[') => Some(List {
                        member,
                        object: false,
                        items: serde_json::from_str::<Vec<&'a RawValue>>(raw)?
                            .into_iter()
                            .map(|r| (None, r))
                            .collect(),
                    }),
                    Some(b'{') => {
                        let Top(pairs) = serde_json::from_str::<Top<'a>>(raw)?;
                        Some(List {
                            member,
                            object: true,
                            items: dedupe(pairs.unwrap_or_default())
                                .into_iter()
                                .map(|(k, r)| (Some(k), r))
                                .collect(),
                        })
                    }
                    _ => None,
                }
            }
            None => None,
        };
        Ok(Doc { members, list })
    }

    /// Whether the document has a top-level member `key`.
    pub fn has_member(&self, key: &str) -> bool {
        self.members.iter().any(|(k, _)| k == key)
    }

    /// Streams the document as `json.dump(indent=2)` writes it (no trailing newline), with
    /// `sets` applied as `Map::insert` would (an existing key keeps its place, a new one goes
    /// last) and each list item written as `item` returns it (given its index and its text).
    pub fn render(
        &self,
        sets: &[(String, Value)],
        item: &mut dyn FnMut(usize, &RawValue) -> serde_json::Result<Value>,
        out: &mut dyn Write,
    ) -> std::io::Result<()> {
        let mut buf = String::with_capacity(4096);
        let added: Vec<&(String, Value)> =
            sets.iter().filter(|(k, _)| !self.has_member(k)).collect();
        if self.members.is_empty() && added.is_empty() {
            return out.write_all(b"{}");
        }
        buf.push('{');
        for (m, (key, raw)) in self.members.iter().enumerate() {
            if m > 0 {
                buf.push(',');
            }
            newline_indent(&mut buf, 1);
            write_string(&mut buf, key);
            buf.push_str(": ");
            if let Some((_, value)) = sets.iter().rev().find(|(k, _)| k == key) {
                write_value(&mut buf, value, 1);
            } else if let Some(list) = self.list.as_ref().filter(|l| l.member == m) {
                self.render_list(list, item, &mut buf, out)?;
            } else {
                write_value(&mut buf, &parse(raw)?, 1);
            }
        }
        for (i, (key, value)) in added.into_iter().enumerate() {
            if i > 0 || !self.members.is_empty() {
                buf.push(',');
            }
            newline_indent(&mut buf, 1);
            write_string(&mut buf, key);
            buf.push_str(": ");
            write_value(&mut buf, value, 1);
        }
        newline_indent(&mut buf, 0);
        buf.push('}');
        out.write_all(buf.as_bytes())
    }

    fn render_list(
        &self,
        list: &List<'_>,
        item: &mut dyn FnMut(usize, &RawValue) -> serde_json::Result<Value>,
        buf: &mut String,
        out: &mut dyn Write,
    ) -> std::io::Result<()> {
        let (open, close) = if list.object { ('{', '}') } else { ('[', ']') };
        if list.items.is_empty() {
            buf.push(open);
            buf.push(close);
            return Ok(());
        }
        buf.push(open);
        for (i, (key, raw)) in list.items.iter().enumerate() {
            if i > 0 {
                buf.push(',');
            }
            newline_indent(buf, 2);
            if let Some(key) = key {
                write_string(buf, key);
                buf.push_str(": ");
            }
            let value = item(i, raw).map_err(std::io::Error::other)?;
            write_value(buf, &value, 2);
            // One item at a time in memory: what is rendered goes out now.
            if buf.len() >= 1 << 16 {
                out.write_all(buf.as_bytes())?;
                buf.clear();
            }
        }
        newline_indent(buf, 1);
        buf.push(close);
        Ok(())
    }
}

/// Checks that `bytes` are one JSON object (trailing whitespace allowed) without building it.
pub fn check_object(bytes: &[u8]) -> Result<(), DocError> {
    serde_json::from_slice::<IgnoredAny>(bytes)?;
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Ok(()),
        _ => Err(DocError::NotObject),
    }
}

/// The value of one span (already checked as JSON when the document was laid out).
pub fn parse(raw: &RawValue) -> std::io::Result<Value> {
    serde_json::from_str(raw.get()).map_err(std::io::Error::other)
}

/// One field of an item as an edit plans with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    Absent,
    Null,
    Str(String),
    /// Any other kind of value.
    Other,
}

impl Field {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Field::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// For an item that is an object, `keys` as they are there (a repeated key counts by its
/// last value); `None` for an item of another kind.
pub fn fields(raw: &RawValue, keys: &[&str]) -> Option<Vec<Field>> {
    if !raw.get().starts_with('{') {
        return None;
    }
    let mut de = serde_json::Deserializer::from_str(raw.get());
    de.deserialize_any(Fields(keys)).ok().flatten()
}

/// For an item that is an object, the string values of `keys` (`None` where absent or not a
/// string; a repeated key counts by its last value); `None` for an item of another kind.
pub fn string_fields(raw: &RawValue, keys: &[&str]) -> Option<Vec<Option<String>>> {
    fields(raw, keys).map(|found| {
        found
            .into_iter()
            .map(|f| match f {
                Field::Str(s) => Some(s),
                _ => None,
            })
            .collect()
    })
}

/// Top-level `{key: span}` pairs in order, or `None` for a valid document of another kind.
struct Top<'a>(Option<Vec<(Cow<'a, str>, &'a RawValue)>>);

impl<'de: 'a, 'a> Deserialize<'de> for Top<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Top<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON document")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top<'a>, A::Error> {
                let mut pairs = Vec::new();
                while let Some(Key(key)) = map.next_key::<Key<'a>>()? {
                    pairs.push((key, map.next_value::<&'a RawValue>()?));
                }
                Ok(Top(Some(pairs)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Top<'a>, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Top(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Top<'a>, E> {
                Ok(Top(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Top<'a>, E> {
                Ok(Top(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Top<'a>, E> {
                Ok(Top(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Top<'a>, E> {
                Ok(Top(None))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Top<'a>, E> {
                Ok(Top(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Top<'a>, E> {
                Ok(Top(None))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// A key, borrowed when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Key<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Key<'a>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key<'a>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Key<'a>, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

/// First position, last value for each key.
fn dedupe<'a>(pairs: Vec<(Cow<'a, str>, &'a RawValue)>) -> Vec<(Cow<'a, str>, &'a RawValue)> {
    let mut first: HashMap<&str, usize> = HashMap::with_capacity(pairs.len());
    let mut last: Vec<Option<&'a RawValue>> = vec![None; pairs.len()];
    let mut repeated = false;
    for (i, (key, raw)) in pairs.iter().enumerate() {
        match first.get(key.as_ref()) {
            Some(&j) => {
                last[j] = Some(*raw);
                repeated = true;
            }
            None => {
                first.insert(key.as_ref(), i);
                last[i] = Some(*raw);
            }
        }
    }
    drop(first);
    if !repeated {
        return pairs;
    }
    pairs
        .into_iter()
        .zip(last)
        .filter_map(|((key, _), raw)| raw.map(|raw| (key, raw)))
        .collect()
}

/// Reads the string values of some keys of an object, skipping everything else unparsed.
struct Fields<'k>(&'k [&'k str]);

impl<'de> Visitor<'de> for Fields<'_> {
    type Value = Option<Vec<Field>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = vec![Field::Absent; self.0.len()];
        while let Some(Key(key)) = map.next_key::<Key<'_>>()? {
            match self.0.iter().position(|k| *k == key) {
                Some(i) => found[i] = map.next_value_seed(AnyField)?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Some(found))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// A value as a [`Field`] (only a string's content kept).
struct AnyField;

impl<'de> DeserializeSeed<'de> for AnyField {
    type Value = Field;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        Ok(match Value::deserialize(d)? {
            Value::String(s) => Field::Str(s),
            Value::Null => Field::Null,
            _ => Field::Other,
        })
    }
}

#[cfg(test)]
mod tests;
