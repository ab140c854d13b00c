//! Templates in task inputs: `${inputs.NAME}` and `${tasks.ID.output.PATH}`
//! inside JSON string values. A string that is exactly one template becomes
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
}

impl std::fmt::Display for Ref {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ref::Input(n) => write!(f, "${{inputs.{n}}}"),
            Ref::Output { task, path } if path.is_empty() => write!(f, "${{tasks.{task}.output}}"),
            Ref::Output { task, path } => write!(f, "${{tasks.{task}.output.{}}}", path.join(".")),
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
        _ => Err(format!(
            "${{{body}}} is not ${{inputs.NAME}} or ${{tasks.ID.output[.PATH]}}"
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

/// Replaces every reference using `lookup`; fails naming the first
/// reference it cannot resolve.
pub fn render(value: &Value, lookup: &dyn Fn(&Ref) -> Option<Value>) -> Result<Value, String> {
    Ok(match value {
        Value::String(s) => {
            let pieces = parse(s)?;
            match pieces.as_slice() {
                [Piece::Ref(r)] => lookup(r).ok_or_else(|| format!("{r} is not available"))?,
                _ if pieces.iter().all(|p| matches!(p, Piece::Text(_))) => Value::String(
                    pieces
                        .into_iter()
                        .map(|p| match p {
                            Piece::Text(t) => t,
                            Piece::Ref(_) => String::new(),
                        })
                        .collect(),
                ),
                _ => {
                    let mut out = String::new();
                    for p in pieces {
                        match p {
                            Piece::Text(t) => out.push_str(&t),
                            Piece::Ref(r) => {
                                match lookup(&r).ok_or_else(|| format!("{r} is not available"))? {
                                    Value::String(s) => out.push_str(&s),
                                    other => out.push_str(&other.to_string()),
                                }
                            }
                        }
                    }
                    Value::String(out)
                }
            }
        }
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|v| render(v, lookup))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| Ok((k.clone(), render(v, lookup)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
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

    fn lookup(r: &Ref) -> Option<Value> {
        let build = json!({"artifact": "app.tar", "size": 42, "files": ["a", "b"]});
        match r {
            Ref::Input(n) if n == "repo" => Some(json!("github.com/x/y")),
            Ref::Output { task, path } if task == "build" => select(&build, path).cloned(),
            _ => None,
        }
    }

    #[test]
    fn whole_string_takes_the_value_and_mixed_strings_interpolate() {
        let input = json!({
            "a": "${tasks.build.output.size}",
            "b": "size=${tasks.build.output.size} of ${inputs.repo}",
            "c": ["${tasks.build.output.files.1}", "cost: $$5"],
            "d": "${tasks.build.output}",
        });
        let out = render(&input, &lookup).unwrap();
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
        let err = render(&json!("${tasks.build.output.nope}"), &lookup).unwrap_err();
        assert!(err.contains("${tasks.build.output.nope}"), "{err}");
    }
}
