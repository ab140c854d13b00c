//! Templates in task inputs: `${inputs.NAME}` and `${tasks.ID.output.PATH}`
//! inside JSON string values; trigger inputs use `${message.PATH}`. A string that is exactly one template becomes
//! the referenced JSON value; otherwise values are interpolated as text
//! (strings raw, anything else as JSON). `$$` is a literal `$`.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ref {
    Input(String),
    /// An upstream task's output, and a path of object keys or array indices.
    Output {
        task: String,
        path: Vec<String>,
    },
    /// A trigger's message (`id`, `key`, `topic`, `headers`, `payload`), and
    /// a path into it.
    Message(Vec<String>),
}

impl std::fmt::Display for Ref {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ref::Input(n) => write!(f, "${{inputs.{n}}}"),
            Ref::Output { task, path } if path.is_empty() => write!(f, "${{tasks.{task}.output}}"),
            Ref::Output { task, path } => write!(f, "${{tasks.{task}.output.{}}}", path.join(".")),
            Ref::Message(path) => write!(f, "${{message.{}}}", path.join(".")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Ref(Ref),
}

fn parse(s: &str) -> Result<Vec<Piece>, String> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        text.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            text.push('$');
            rest = r;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unclosed template in {s:?}"))?;
            if !text.is_empty() {
                out.push(Piece::Text(std::mem::take(&mut text)));
            }
            out.push(Piece::Ref(parse_ref(&body[..end])?));
            rest = &body[end + 1..];
        } else {
            text.push('$');
            rest = after;
        }
    }
    text.push_str(rest);
    if !text.is_empty() {
        out.push(Piece::Text(text));
    }
    Ok(out)
}

fn parse_ref(body: &str) -> Result<Ref, String> {
    let parts: Vec<&str> = body.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!("${{{body}}} has an empty segment"));
    }
    match parts.as_slice() {
        ["inputs", name] => Ok(Ref::Input((*name).to_owned())),
        ["tasks", task, "output", path @ ..] => Ok(Ref::Output {
            task: (*task).to_owned(),
            path: path.iter().map(|p| (*p).to_owned()).collect(),
        }),
        ["message", path @ ..] if !path.is_empty() => {
            Ok(Ref::Message(path.iter().map(|p| (*p).to_owned()).collect()))
        }
        _ => Err(format!(
            "${{{body}}} is not ${{inputs.NAME}}, ${{tasks.ID.output[.PATH]}} or ${{message.PATH}}"
        )),
    }
}

/// Every reference in the string values of `value`.
pub fn refs(value: &Value) -> Result<Vec<Ref>, String> {
    let mut out = Vec::new();
    walk(value, &mut |s| {
        for p in parse(s)? {
            if let Piece::Ref(r) = p {
                out.push(r);
            }
        }
        Ok(())
    })?;
    Ok(out)
}

fn walk(value: &Value, f: &mut dyn FnMut(&str) -> Result<(), String>) -> Result<(), String> {
    match value {
        Value::String(s) => f(s),
        Value::Array(a) => a.iter().try_for_each(|v| walk(v, f)),
        Value::Object(o) => o.values().try_for_each(|v| walk(v, f)),
        _ => Ok(()),
    }
}

/// Largest rendered task input, as JSON text. Templates multiply: one
/// `${inputs.x}` repeated in an input of a few hundred KiB could otherwise
/// render to gigabytes.
pub const MAX_RENDERED_BYTES: usize = 1024 * 1024;

/// Replaces every reference using `lookup`; fails naming the first
/// reference it cannot resolve, or once the result would pass `max_bytes`
/// of JSON text — before the copy that would pass it is made, so rendering
/// never holds much more than `max_bytes`.
pub fn render<'v>(
    value: &Value,
    lookup: &dyn Fn(&Ref) -> Option<&'v Value>,
    max_bytes: usize,
) -> Result<Value, String> {
    let mut budget = Budget {
        left: max_bytes,
        max: max_bytes,
    };
    render_in(value, lookup, &mut budget)
}

struct Budget {
    left: usize,
    max: usize,
}

impl Budget {
    fn spend(&mut self, n: usize) -> Result<(), String> {
        match self.left.checked_sub(n) {
            Some(left) => {
                self.left = left;
                Ok(())
            }
            None => Err(format!("renders to more than {} bytes", self.max)),
        }
    }
}

/// The length of `v` as JSON text, without writing it anywhere.
fn json_len(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

fn render_in<'v>(
    value: &Value,
    lookup: &dyn Fn(&Ref) -> Option<&'v Value>,
    budget: &mut Budget,
) -> Result<Value, String> {
    let find = |r: &Ref| lookup(r).ok_or_else(|| format!("{r} is not available"));
    Ok(match value {
        Value::String(s) => {
            let pieces = parse(s)?;
            if let [Piece::Ref(r)] = pieces.as_slice() {
                let v = find(r)?;
                budget.spend(json_len(v))?;
                return Ok(v.clone());
            }
            let mut out = String::new();
            for p in pieces {
                match p {
                    Piece::Text(t) => {
                        budget.spend(t.len())?;
                        out.push_str(&t);
                    }
                    Piece::Ref(r) => match find(&r)? {
                        Value::String(v) => {
                            budget.spend(v.len())?;
                            out.push_str(v);
                        }
                        other => {
                            budget.spend(json_len(other))?;
                            out.push_str(&other.to_string());
                        }
                    },
                }
            }
            budget.spend(2)?;
            Value::String(out)
        }
        Value::Array(a) => {
            budget.spend(2 + a.len())?;
            Value::Array(
                a.iter()
                    .map(|v| render_in(v, lookup, budget))
                    .collect::<Result<_, _>>()?,
            )
        }
        Value::Object(o) => {
            budget.spend(2)?;
            Value::Object(
                o.iter()
                    .map(|(k, v)| {
                        budget.spend(k.len() + 4)?;
                        Ok((k.clone(), render_in(v, lookup, budget)?))
                    })
                    .collect::<Result<_, String>>()?,
            )
        }
        other => {
            budget.spend(json_len(other))?;
            other.clone()
        }
    })
}

/// Follows `path` (object keys, array indices) into `value`.
pub fn select<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, seg| match v {
        Value::Object(o) => o.get(seg),
        Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    static BUILD: std::sync::LazyLock<Value> = std::sync::LazyLock::new(
        || json!({"artifact": "app.tar", "size": 42, "files": ["a", "b"]}),
    );
    static REPO: std::sync::LazyLock<Value> = std::sync::LazyLock::new(|| json!("github.com/x/y"));

    fn lookup(r: &Ref) -> Option<&'static Value> {
        match r {
            Ref::Input(n) if n == "repo" => Some(&REPO),
            Ref::Output { task, path } if task == "build" => select(&BUILD, path),
            _ => None,
        }
    }

    /// Defect: the input limit was checked before rendering, so a few
    /// hundred KiB of `${inputs.x}` copies rendered to gigabytes.
    #[test]
    fn rendering_stops_at_its_budget() {
        let big = Value::String("x".repeat(256 * 1024));
        let lookup = |_: &Ref| Some(&big);
        let many = Value::Array(vec![json!("${inputs.x}"); 18_000]);
        let e = render(&many, &lookup, MAX_RENDERED_BYTES).unwrap_err();
        assert!(e.contains("more than 1048576 bytes"), "{e}");
        let mixed = Value::Array(vec![json!("a ${inputs.x} b"); 18_000]);
        assert!(render(&mixed, &lookup, MAX_RENDERED_BYTES).is_err());
        let one = json!({"x": "${inputs.x}"});
        let out = render(&one, &lookup, MAX_RENDERED_BYTES).unwrap();
        assert!(json_len(&out) <= MAX_RENDERED_BYTES);
    }

    #[test]
    fn whole_string_takes_the_value_and_mixed_strings_interpolate() {
        let input = json!({
            "a": "${tasks.build.output.size}",
            "b": "size=${tasks.build.output.size} of ${inputs.repo}",
            "c": ["${tasks.build.output.files.1}", "cost: $$5"],
            "d": "${tasks.build.output}",
        });
        let out = render(&input, &lookup, MAX_RENDERED_BYTES).unwrap();
        assert_eq!(out["a"], json!(42));
        assert_eq!(out["b"], json!("size=42 of github.com/x/y"));
        assert_eq!(out["c"], json!(["b", "cost: $5"]));
        assert_eq!(out["d"]["artifact"], json!("app.tar"));
    }

    #[test]
    fn bad_templates_are_named() {
        assert!(refs(&json!("${inputs.x")).unwrap_err().contains("unclosed"));
        assert!(
            refs(&json!("${env.HOME}"))
                .unwrap_err()
                .contains("env.HOME")
        );
        assert!(refs(&json!("${tasks.a.result}")).is_err());
        assert!(refs(&json!("${inputs..x}")).is_err());
        let r = refs(&json!({"k": ["${inputs.a}", "${tasks.b.output.c.0}"]})).unwrap();
        assert_eq!(r.len(), 2);
        let err = render(&json!("${tasks.build.output.nope}"), &lookup, 1000).unwrap_err();
        assert!(err.contains("${tasks.build.output.nope}"), "{err}");
    }
}
