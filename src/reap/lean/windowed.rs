//! A registry parsed as it is read, through a window of its text: each top-level member and
//! each `agents` entry is found by a small JSON scanner and parsed from its own bytes by
//! serde_json's slice reader. serde_json's `from_reader` takes a call per byte and was most of
//! a pass's confirm (a 43 MB registry after 40,000 records: 400 ms of the 520).

use super::{AgentsSeed, Key, LeanAgent, LeanRegistry};
use serde::de::{DeserializeSeed, Error as _, IgnoredAny};
use serde_json::Value;
use std::io::Read;

/// Bytes read at a time; the window holds about this much beside the entry being parsed.
const READ_SIZE: usize = 256 * 1024;
/// Nesting deeper than this is left to the caller's fallback: serde_json stops at 128 levels
/// of the whole text, and an entry parsed alone would count two fewer.
const MAX_DEPTH: usize = 100;

type Result<T> = serde_json::Result<T>;

/// What [`super::parse_reader`] returns, for every text: the same registry for a text the
/// whole-text parse reads, an error for one it refuses (and, for nesting deeper than
/// [`MAX_DEPTH`], an error where it may not).
pub(super) fn parse(reader: impl Read) -> Result<LeanRegistry> {
    let mut w = Window {
        reader,
        buf: Vec::with_capacity(READ_SIZE),
        pos: 0,
        eof: false,
    };
    let mut out = LeanRegistry::default();
    w.skip_ws()?;
    w.expect(b'{')?;
    w.skip_ws()?;
    if w.peek()? == Some(b'}') {
        w.pos += 1;
        return w.finish(out);
    }
    loop {
        let key: Key = w.value(|b| serde_json::from_slice(b))?;
        w.skip_ws()?;
        w.expect(b':')?;
        w.skip_ws()?;
        match key {
            Key::Agents if w.peek()? == Some(b'[') => out.agents = Some(w.agents()?),
            Key::Agents => {
                out.agents = w.value(|bytes| {
                    let mut de = serde_json::Deserializer::from_slice(bytes);
                    let agents = AgentsSeed(0).deserialize(&mut de)?.0;
                    de.end().map(|()| agents)
                })?;
            }
            Key::ActiveCount => {
                out.active_count = w.value(|b| serde_json::from_slice::<Value>(b))?.as_i64();
            }
            _ => {
                w.value(|b| serde_json::from_slice::<IgnoredAny>(b))?;
            }
        }
        w.skip_ws()?;
        match w.next()? {
            b',' => w.skip_ws()?,
            b'}' => return w.finish(out),
            _ => return Err(invalid("expected `,` or `}` after an object member")),
        }
    }
}

fn invalid(what: &str) -> serde_json::Error {
    serde_json::Error::custom(what)
}

struct Window<R> {
    reader: R,
    buf: Vec<u8>,
    /// Where the unparsed text starts in `buf`.
    pos: usize,
    eof: bool,
}

impl<R: Read> Window<R> {
    /// Reads more; false at the end of the text. What is parsed is dropped first.
    fn fill(&mut self) -> Result<bool> {
        if self.eof {
            return Ok(false);
        }
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        // Into the vector's spare room (no zeroing of a piece per read), up to READ_SIZE.
        let n = (&mut self.reader)
            .take(READ_SIZE as u64)
            .read_to_end(&mut self.buf)
            .map_err(serde_json::Error::io)?;
        self.eof = n < READ_SIZE;
        Ok(n > 0)
    }

    fn peek(&mut self) -> Result<Option<u8>> {
        while self.pos >= self.buf.len() {
            if !self.fill()? {
                return Ok(None);
            }
        }
        Ok(Some(self.buf[self.pos]))
    }

    fn next(&mut self) -> Result<u8> {
        let b = self
            .peek()?
            .ok_or_else(|| invalid("EOF while parsing the registry"))?;
        self.pos += 1;
        Ok(b)
    }

    fn expect(&mut self, want: u8) -> Result<()> {
        match self.next()? {
            b if b == want => Ok(()),
            _ => Err(invalid("unexpected character in the registry")),
        }
    }

    fn skip_ws(&mut self) -> Result<()> {
        while let Some(b) = self.peek()? {
            if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                break;
            }
            self.pos += 1;
        }
        Ok(())
    }

    /// The value starting at `pos`, parsed by `parse` from exactly its bytes; `pos` moves
    /// past it.
    fn value<T>(&mut self, parse: impl FnOnce(&[u8]) -> Result<T>) -> Result<T> {
        let end = self.value_end()?;
        let value = parse(&self.buf[self.pos..end])?;
        self.pos = end;
        Ok(value)
    }

    /// Where the value starting at `pos` ends (exclusive), reading as far as needed. Only
    /// its extent is found here; serde_json then parses exactly those bytes, so a text that
    /// is not JSON fails there if not here.
    fn value_end(&mut self) -> Result<usize> {
        let first = self
            .peek()?
            .ok_or_else(|| invalid("EOF while parsing a value"))?;
        let mut scan = Scan::default();
        // Offsets are kept relative to `pos`: a fill moves the text to the window's start.
        let mut at = 0;
        loop {
            let bytes = &self.buf[self.pos..];
            match scan.run(first, bytes, at)? {
                Some(len) => return Ok(self.pos + len),
                None => {
                    at = bytes.len();
                    if !self.fill()? {
                        // A scalar ends with the text; anything else is cut short.
                        return match first {
                            b'"' | b'{' | b'[' => Err(invalid("EOF while parsing a value")),
                            _ => Ok(self.buf.len()),
                        };
                    }
                }
            }
        }
    }

    /// The `agents` array from its `[`, one entry at a time.
    fn agents(&mut self) -> Result<Vec<LeanAgent>> {
        self.expect(b'[')?;
        let mut agents = Vec::new();
        self.skip_ws()?;
        if self.peek()? == Some(b']') {
            self.pos += 1;
            return Ok(agents);
        }
        loop {
            agents.push(self.value(|b| serde_json::from_slice(b))?);
            self.skip_ws()?;
            match self.next()? {
                b',' => self.skip_ws()?,
                b']' => break,
                _ => return Err(invalid("expected `,` or `]` in the agents array")),
            }
        }
        agents.shrink_to_fit();
        Ok(agents)
    }

    /// Only whitespace may follow the registry object.
    fn finish(mut self, out: LeanRegistry) -> Result<LeanRegistry> {
        self.skip_ws()?;
        match self.peek()? {
            None => Ok(out),
            Some(_) => Err(invalid("trailing characters after the registry object")),
        }
    }
}

/// A scan through one value, resumable when the window grows.
#[derive(Default)]
struct Scan {
    depth: usize,
    in_string: bool,
    escaped: bool,
}

impl Scan {
    /// From `at` in `bytes` (the value starts at 0 with `first`): the value's length once
    /// its end is in `bytes`, `None` when more is needed.
    fn run(&mut self, first: u8, bytes: &[u8], at: usize) -> Result<Option<usize>> {
        if !matches!(first, b'"' | b'{' | b'[') {
            // A number, `true`, `false` or `null`: up to the next delimiter.
            return Ok(bytes[at..]
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                .map(|i| at + i));
        }
        let mut i = at;
        if i == 0 {
            // The opening byte.
            if first == b'"' {
                self.in_string = true;
            } else {
                self.depth = 1;
            }
            i = 1;
        }
        while i < bytes.len() {
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                    i += 1;
                    continue;
                }
                // Most of a registry is inside strings: jump to the next quote or escape.
                let Some(j) = memchr::memchr2(b'"', b'\\', &bytes[i..]) else {
                    return Ok(None);
                };
                i += j + 1;
                if bytes[i - 1] == b'\\' {
                    self.escaped = true;
                } else {
                    self.in_string = false;
                    if self.depth == 0 {
                        return Ok(Some(i));
                    }
                }
                continue;
            }
            let b = bytes[i];
            i += 1;
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => {
                    self.depth += 1;
                    if self.depth > MAX_DEPTH {
                        return Err(invalid("nesting too deep to parse in pieces"));
                    }
                }
                b'}' | b']' => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        return Ok(Some(i));
                    }
                }
                _ => {}
            }
        }
        Ok(None)
    }
}
