//! The one place SQL text is built from names and values: every identifier
//! goes through [`ident`], every string value through [`literal`].

/// Quote an identifier for SQL: `users` becomes `"users"`, embedded double
/// quotes are doubled. Case and unicode are preserved exactly.
pub fn ident(name: &str) -> String {
    postgres_protocol::escape::escape_identifier(name)
}

/// `"schema"."name"`.
pub fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", ident(schema), ident(name))
}

/// Quote a string literal (`'it''s'`, or `E'...'` when it holds backslashes).
pub fn literal(value: &str) -> String {
    postgres_protocol::escape::escape_literal(value)
        .trim_start()
        .to_string()
}

/// A comma-separated list of quoted identifiers.
pub fn ident_list<S: AsRef<str>>(names: &[S]) -> String {
    names
        .iter()
        .map(|n| ident(n.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Postgres truncates identifiers to 63 bytes. Build a name from `prefix` and
/// `base` that fits, replacing the tail by a short hash when it would not, so
/// two long names never collide after truncation.
pub fn bounded_name(prefix: &str, base: &str) -> String {
    const MAX: usize = 63;
    let full = format!("{prefix}{base}");
    if full.len() <= MAX {
        return full;
    }
    let hash = format!("{:08x}", fnv1a(full.as_bytes()) as u32);
    let mut keep = MAX - hash.len() - 1;
    while !full.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{}_{hash}", &full[..keep])
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// One identifier of an SQL expression, with what surrounds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Word {
    /// As Postgres folds it: lower case unless quoted.
    pub name: String,
    pub quoted: bool,
    /// Qualified: `x.name`.
    pub after_dot: bool,
    /// A type in a cast: `::name`.
    pub after_cast: bool,
    /// Called: `name(`.
    pub before_paren: bool,
}

/// The identifiers (bare words and "quoted" names) of an SQL expression in
/// order, skipping string literals.
pub fn words(expr: &str) -> Vec<Word> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let next_is_paren = |j: usize| chars[j..].iter().find(|c| !c.is_whitespace()) == Some(&'(');
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        let (name, quoted) = if c == '\'' || c == '"' {
            let mut name = String::new();
            i += 1;
            while i < chars.len() {
                if chars[i] == c {
                    if chars.get(i + 1) == Some(&c) {
                        name.push(c);
                        i += 2;
                        continue;
                    }
                    break;
                }
                name.push(chars[i]);
                i += 1;
            }
            i += 1;
            if c == '\'' {
                continue;
            }
            (name, true)
        } else if c.is_alphabetic() || c == '_' {
            let mut name = String::new();
            while i < chars.len()
                && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '$')
            {
                name.push(chars[i]);
                i += 1;
            }
            (name.to_lowercase(), false)
        } else {
            i += 1;
            continue;
        };
        // The last non-blank character before the word, and the one before it.
        let p = chars[..start].iter().rposition(|c| !c.is_whitespace());
        let at = |k: Option<usize>| k.map(|k| chars[k]);
        out.push(Word {
            name,
            quoted,
            after_dot: at(p) == Some('.'),
            after_cast: at(p) == Some(':') && at(p.and_then(|k| k.checked_sub(1))) == Some(':'),
            before_paren: next_is_paren(i.min(chars.len())),
        });
    }
    out
}

/// Names of identifiers (bare words and "quoted" names) that appear in an SQL
/// expression, case-folded as Postgres folds them. Used to declare only the
/// trigger variables an `up`/`down` expression can refer to; a word that is a
/// keyword or function name is harmless extra.
pub fn referenced_names(expr: &str) -> Vec<String> {
    let mut out: Vec<String> = words(expr).into_iter().map(|w| w.name).collect();
    out.sort();
    out.dedup();
    out
}

/// Rewrite references to column `from` in an SQL expression so they name
/// `to` instead: bare words equal to `from` (as Postgres folds them) and
/// quoted names equal to it, skipping string literals, qualified names
/// (`t.from`) and function calls (`from(...)`). Used to put a check
/// constraint written for column `c` onto its temporary copy.
pub fn rewrite_column_refs(expr: &str, from: &str, to: &str) -> String {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = String::with_capacity(expr.len() + 16);
    let mut i = 0;
    let prev_is_dot = |out: &String| out.trim_end().ends_with('.');
    let next_is_paren = |j: usize| chars[j..].iter().find(|c| !c.is_whitespace()) == Some(&'(');
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            out.push(c);
            i += 1;
            while i < chars.len() {
                out.push(chars[i]);
                if chars[i] == '\'' {
                    if i + 1 < chars.len() && chars[i + 1] == '\'' {
                        out.push('\'');
                        i += 2;
                        continue;
                    }
                    break;
                }
                i += 1;
            }
            i += 1;
        } else if c == '"' {
            let start = i;
            let mut name = String::new();
            i += 1;
            while i < chars.len() {
                if chars[i] == '"' {
                    if i + 1 < chars.len() && chars[i + 1] == '"' {
                        name.push('"');
                        i += 2;
                        continue;
                    }
                    break;
                }
                name.push(chars[i]);
                i += 1;
            }
            i += 1;
            if name == from && !prev_is_dot(&out) && !next_is_paren(i.min(chars.len())) {
                out.push_str(&ident(to));
            } else {
                out.extend(&chars[start..i.min(chars.len())]);
            }
        } else if c.is_alphabetic() || c == '_' {
            let mut word = String::new();
            while i < chars.len()
                && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '$')
            {
                word.push(chars[i]);
                i += 1;
            }
            if word.to_lowercase() == from && !prev_is_dot(&out) && !next_is_paren(i) {
                out.push_str(&ident(to));
            } else {
                out.push_str(&word);
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn rewrite_column_refs_skips_literals_functions_and_qualified_names() {
        let r = rewrite_column_refs(
            "length(name) > 3 AND name <> 'name' AND t.name IS NULL",
            "name",
            "_n",
        );
        assert_eq!(
            r,
            "length(\"_n\") > 3 AND \"_n\" <> 'name' AND t.name IS NULL"
        );
        let r = rewrite_column_refs("\"Name\" > 0 AND name > 1", "Name", "_n");
        assert_eq!(r, "\"_n\" > 0 AND name > 1");
    }

    use super::*;

    #[test]
    fn ident_doubles_quotes_and_keeps_case() {
        assert_eq!(ident("Users"), "\"Users\"");
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(ident("x; DROP TABLE y"), "\"x; DROP TABLE y\"");
    }

    #[test]
    fn literal_doubles_single_quotes() {
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(literal("a\\b"), "E'a\\\\b'");
    }

    #[test]
    fn bounded_name_fits_63_bytes_and_stays_distinct() {
        let a = bounded_name("_pgshift_new_", &"x".repeat(60));
        let b = bounded_name("_pgshift_new_", &format!("{}y", "x".repeat(59)));
        assert!(a.len() <= 63 && b.len() <= 63);
        assert_ne!(a, b);
        assert_eq!(bounded_name("p_", "short"), "p_short");
        let u = bounded_name("_pgshift_new_", &"é".repeat(40));
        assert!(u.len() <= 63);
    }

    #[test]
    fn referenced_names_skips_literals_and_folds_case() {
        let names =
            referenced_names("CASE WHEN Name IS NULL THEN 'x y' ELSE \"Mixed\" || name END");
        assert!(names.contains(&"name".to_string()));
        assert!(names.contains(&"Mixed".to_string()));
        assert!(!names.contains(&"x".to_string()));
    }

    #[test]
    fn words_say_what_surrounds_each_name() {
        let w = words("pg_catalog.lower(\"A\")::character varying(3) || 'f(x)'");
        let names: Vec<&str> = w.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["pg_catalog", "lower", "A", "character", "varying"]);
        assert!(w[1].after_dot && w[1].before_paren && !w[0].before_paren);
        assert!(w[2].quoted && w[3].after_cast && !w[4].after_cast && w[4].before_paren);
    }
}
