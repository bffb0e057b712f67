//! Procedural galaxy names: a syllable-built proper name, sometimes with a
//! descriptive suffix ("Kestrel Reach", "Andromeda-Vex").

use rand::seq::SliceRandom;
use rand::Rng;

const STARTS: &[&str] = &[
    "an", "ke", "or", "ve", "ly", "sa", "tho", "ca", "mi", "dra", "el", "zy", "qua", "ra", "ne",
    "so", "ix", "pe", "vo", "ar",
];
const MIDDLES: &[&str] = &[
    "dro", "stre", "li", "ma", "ri", "the", "na", "lo", "ve", "sy", "ta", "ri", "mo", "phe",
];
const ENDS: &[&str] = &[
    "da", "l", "on", "is", "ar", "ex", "us", "ia", "en", "or", "ax", "ith", "a", "os",
];
const SUFFIXES: &[&str] = &[
    "Reach", "Wake", "Expanse", "Drift", "Spiral", "Veil", "Cluster", "Crown", "Deep", "Halo",
];
const TAGS: &[&str] = &[
    "Vex", "Prime", "Nova", "Major", "Minor", "Tau", "Sigma", "Rho",
];

fn proper(rng: &mut impl Rng) -> String {
    let mut s = String::new();
    s.push_str(STARTS.choose(rng).expect("non-empty"));
    for _ in 0..rng.gen_range(0..=2) {
        s.push_str(MIDDLES.choose(rng).expect("non-empty"));
    }
    s.push_str(ENDS.choose(rng).expect("non-empty"));
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => s,
    }
}

/// A random galaxy name.
pub fn random_name(rng: &mut impl Rng) -> String {
    let base = proper(rng);
    match rng.gen_range(0..4) {
        0 => format!("{base} {}", SUFFIXES.choose(rng).expect("non-empty")),
        1 => format!("{base}-{}", TAGS.choose(rng).expect("non-empty")),
        2 => format!("{base}'s {}", SUFFIXES.choose(rng).expect("non-empty")),
        _ => base,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_capitalised_printable_and_varied() {
        let mut rng = rand::thread_rng();
        let names: std::collections::HashSet<_> =
            (0..1000).map(|_| random_name(&mut rng)).collect();
        assert!(names.len() > 500, "only {} distinct names", names.len());
        for n in &names {
            assert!(n.chars().next().unwrap().is_uppercase(), "{n}");
            assert!((3..=40).contains(&n.len()), "{n}");
            assert!(
                n.chars().all(|c| c.is_alphabetic() || " -'".contains(c)),
                "{n}"
            );
        }
    }
}
