//! Serialises JSON the way Python's `json.dump(obj, f, indent=2)` does, so our rewrites diff cleanly.

use serde_json::{Number, Value};
use std::fmt::Write as _;

/// `json.dumps(value, indent=2)` byte for byte: `ensure_ascii` escapes (`\u26a0`, surrogate
/// pairs above the BMP), `", "`/`": "` separators with newlines, `[]`/`{}` for empty
/// containers, numbers as written in the source (serde_json's `arbitrary_precision`).
///
/// Numbers are written as Python would write what `json.load` made of them: integers keep
/// their source digits (Python ints are unbounded too), floats are written as `repr(float)`.
/// For text Python wrote, that is the source text unchanged (`32.690331`, `1e-05`, `100.0`);
/// floats built in Rust (`Value::from(1e-5)`, which serde_json keeps as `1e-5`) and
/// non-canonical source text (`1E5`, `1.50`) come out as Python's rewrite would. A float
/// literal that overflows `f64` keeps its source text: Python would write `Infinity`,
/// which is not JSON.
pub fn to_python_json(value: &Value) -> String {
    let mut out = String::with_capacity(256);
    write_value(&mut out, value, 0);
    out
}

pub(crate) fn write_value(out: &mut String, value: &Value, depth: usize) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            if items.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline_indent(out, depth + 1);
                write_value(out, item, depth + 1);
            }
            newline_indent(out, depth);
            out.push(']');
        }
        Value::Object(map) => {
            if map.is_empty() {
                out.push_str("{}");
                return;
            }
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline_indent(out, depth + 1);
                write_string(out, key);
                out.push_str(": ");
                write_value(out, item, depth + 1);
            }
            newline_indent(out, depth);
            out.push('}');
        }
    }
}

pub(crate) fn newline_indent(out: &mut String, depth: usize) {
    out.push('\n');
    for _ in 0..depth {
        out.push_str("  ");
    }
}

/// Python's `ensure_ascii` escaping: only printable ASCII (space to `~`) goes through as is.
pub(crate) fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}

fn write_number(out: &mut String, n: &Number) {
    // With `arbitrary_precision`, Display is the text the number was parsed from.
    let text = n.to_string();
    let is_float = text.contains(['.', 'e', 'E']);
    if !is_float {
        // Python's int() of "-0" is 0; every other JSON integer text is already canonical.
        if text == "-0" {
            out.push('0');
        } else {
            out.push_str(&text);
        }
        return;
    }
    match text.parse::<f64>() {
        Ok(f) if f.is_finite() => write_python_float_repr(out, f),
        _ => out.push_str(&text),
    }
}

/// `repr(float)`: the shortest round-tripping digits, fixed notation for decimal exponents
/// -4..16, otherwise `d.ddde+XX` with two or more exponent digits.
fn write_python_float_repr(out: &mut String, f: f64) {
    let sci = python_shortest_digits(f);
    let (mantissa, exp) = sci.split_once('e').expect("`{:e}` always has an exponent");
    let exp: i32 = exp.parse().expect("`{:e}` exponent is an integer");
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if negative {
        out.push('-');
    }
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.push_str(&digits);
                out.extend(std::iter::repeat_n('0', int_len - digits.len()));
                out.push_str(".0");
            } else {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            }
        } else {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
            out.push_str(&digits);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let sign = if exp < 0 { '-' } else { '+' };
        let _ = write!(out, "e{sign}{:02}", exp.unsigned_abs());
    }
}

/// `{:e}` of `f` with Python's digits. Rust's `{:e}` finds how many digits are needed, but
/// where two strings of that length both round-trip it may take the upper one, while Python
/// takes the one nearest the exact value, ties to even (`32330180961432.562`, whose exact
/// value ends in `.5625`, not `...563`). Rust's fixed-precision `{:.N$e}` rounds the exact
/// value half to even, so it gives Python's choice whenever that choice round-trips.
fn python_shortest_digits(f: f64) -> String {
    let shortest = format!("{f:e}");
    let mantissa = shortest
        .split_once('e')
        .map_or(shortest.as_str(), |(m, _)| m);
    let digits = mantissa.chars().filter(char::is_ascii_digit).count();
    let nearest = format!("{f:.prec$e}", prec = digits.saturating_sub(1));
    if nearest.parse::<f64>() == Ok(f) {
        nearest
    } else {
        shortest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::process::{Command, Stdio};

    /// Runs python3 with `script`, feeding `input` as JSON on stdin; returns its stdout parsed.
    fn python(script: &str, input: &Value) -> Value {
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 on PATH");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.to_string().as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "python3 failed");
        serde_json::from_slice(&output.stdout).unwrap()
    }

    fn fixture_registries() -> Option<Vec<std::path::PathBuf>> {
        fn walk(dir: &std::path::Path, found: &mut Vec<std::path::PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, found);
                } else if path
                    .file_name()
                    .is_some_and(|n| n == "AGENT_REGISTRY.json" || n == "GLOBAL_REGISTRY.json")
                {
                    found.push(path);
                }
            }
        }
        let base = crate::test_shared::fixture_workspace()?;
        let mut found = Vec::new();
        walk(&base, &mut found);
        found.sort();
        Some(found)
    }

    #[test]
    fn fixture_registries_round_trip_byte_identical() {
        let Some(files) = fixture_registries() else {
            return;
        };
        assert!(files.len() >= 6, "fixtures missing: {files:?}");
        for file in files {
            let bytes = std::fs::read(&file).unwrap();
            let value: Value = serde_json::from_slice(&bytes).unwrap();
            let mut text = to_python_json(&value);
            // The orchestrator's json.dump writes no trailing newline; keep whatever is there.
            if bytes.ends_with(b"\n") {
                text.push('\n');
            }
            assert!(
                text.as_bytes() == bytes.as_slice(),
                "{} differs",
                file.display()
            );
        }
    }

    const TRICKY: &[&str] = &[
        r#"{}"#,
        r#"[]"#,
        r#"{"a": [], "b": {}, "c": [[]], "d": [{}], "e": {"f": {"g": []}}}"#,
        r#"[null, true, false, 0, -1, -0, 12345678901234567890123456789, -9223372036854775809]"#,
        r#"[32.690331, 1e-05, 100.0, 1E5, 1.50, -0.0, 0.1, 1e16, 1e15, 9999999999999998.0]"#,
        r#"[1e22, 1.5e-7, 0.0001, 0.00001, 5e-324, 1.7976931348623157e308, 2.5E+300, 123.456e-2]"#,
        r#"[0.30000000000000004, 1e-4, 12345678.9, 1.0e0, 100, 4.35, 2e-1, 1234567890123456789.0]"#,
        r#""\u0000\u0001\u0007\b\t\n\u000b\f\r\u001b\u001f \u007f\u0080""#,
        r#""quote \" backslash \\ slash / \/ tilde ~""#,
        r#""caf\u00e9 \u26a0 \u2028\u2029 \uffff \ufeff \ud83d\ude00 \udbff\udfff ÅΩ€𝄞""#,
        r#"{"k\u00e9y \n": "v", "\ud83d\ude00": {"nested": ["x", 1, {"y": null}]}}"#,
        r#"{"dup": 1, "other": 2, "dup": 3}"#,
        r#"[[[[[[[[[[1]]]]]]]]]]"#,
        r#"{"emoji only": "🦀", "tab\tkey": "\t"}"#,
    ];

    #[test]
    fn tricky_values_match_python() {
        let inputs: Vec<Value> = TRICKY.iter().map(|t| Value::from(*t)).collect();
        let expected = python(
            "import json,sys\n\
             print(json.dumps([json.dumps(json.loads(t), indent=2) for t in json.load(sys.stdin)]))",
            &Value::from(inputs),
        );
        for (text, want) in TRICKY.iter().zip(expected.as_array().unwrap()) {
            let value: Value = serde_json::from_str(text).unwrap();
            assert_eq!(
                to_python_json(&value),
                want.as_str().unwrap(),
                "input: {text}"
            );
        }
    }

    #[test]
    fn rust_built_floats_match_python_repr() {
        // xorshift: deterministic spread over all bit patterns, plus hand-picked edges.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut floats = vec![
            0.0,
            -0.0,
            1.0,
            0.1,
            1e-5,
            1e-4,
            1e15,
            1e16,
            1e-7,
            123.0,
            f64::MIN_POSITIVE,
            f64::MAX,
            f64::MIN,
            f64::EPSILON,
            5e-324,
            // Two 17-digit strings round-trip; the exact value ends in .5625: Python takes .562.
            32330180961432.562,
        ];
        while floats.len() < 3000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let f = f64::from_bits(state);
            if f.is_finite() {
                floats.push(f);
            }
            // Also plain-looking decimals, where fixed notation and rounding matter.
            floats.push((state % 10_000_000) as f64 / 10f64.powi((state % 23) as i32 - 6));
        }
        let bits: Vec<Value> = floats.iter().map(|f| Value::from(f.to_bits())).collect();
        let expected = python(
            "import json,sys,struct\n\
             print(json.dumps([json.dumps(struct.unpack('<d', struct.pack('<Q', b))[0])\n\
             for b in json.load(sys.stdin)]))",
            &Value::from(bits),
        );
        for (f, want) in floats.iter().zip(expected.as_array().unwrap()) {
            assert_eq!(
                to_python_json(&Value::from(*f)),
                want.as_str().unwrap(),
                "bits {:#x}",
                f.to_bits()
            );
        }
    }

    #[test]
    fn display_keeps_source_text_of_python_numbers() {
        for text in [
            "32.690331",
            "1e-05",
            "100.0",
            "-0.0",
            "12345678901234567890123456789",
        ] {
            let n: Number = serde_json::from_str(text).unwrap();
            assert_eq!(n.to_string(), text);
        }
        // Not every source text survives: serde_json normalises the exponent marker, which is
        // why floats are re-derived as Python's repr rather than trusted verbatim.
        let n: Number = serde_json::from_str("1E5").unwrap();
        assert_eq!(n.to_string(), "1e+5");
    }
}
