//! Serialises JSON the way Python's `json.dump(obj, f, indent=2)` does, so our rewrites diff cleanly.

use serde_json::Value;

/// `json.dumps(value, indent=2)` byte for byte: `ensure_ascii` escapes (`\u26a0`, surrogate
/// pairs above the BMP), `", "`/`": "` separators with newlines, `[]`/`{}` for empty
/// containers, numbers as written in the source (serde_json's `arbitrary_precision`).
pub fn to_python_json(value: &Value) -> String {
    let _ = value;
    todo!("registry helper")
}
