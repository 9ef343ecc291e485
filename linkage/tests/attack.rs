//! A frequency attack on given-name encodings. The attacker holds the
//! encodings and the public frequency ranking of given names, groups equal
//! filters, and labels the largest groups with the commonest names. On plain
//! encodings (no salt) equal names give equal filters, so the ranking gives
//! most records away; salted with the birth year, each name is spread over
//! many unrelated filters and the same attack recovers far fewer. The full
//! name (there for a wrong or missing birth date), salted with the postcode
//! district, must give no more away than the given name.
//! (`cargo test -p joinery-linkage --test attack -- --nocapture` prints both.)

use std::collections::HashMap;

use joinery_crypto::keys::SecretKey;
use joinery_linkage::sequence::Sequence;
use joinery_linkage::{Encoder, Identity, LinkageParams};

/// Names in order of (public) frequency.
const NAMES: &[&str] = &[
    "OLIVIA", "AMELIA", "ISLA", "AVA", "IVY", "FREYA", "LILY", "FLORENCE", "MIA", "WILLOW",
    "ROSIE", "SOPHIA", "ISABELLA", "GRACE", "DAISY", "SIENNA", "POPPY", "ELSIE", "EMILY", "ELLA",
];

/// Family names, by frequency.
const FAMILIES: &[&str] = &[
    "SMITH", "JONES", "TAYLOR", "BROWN", "WILLIAMS", "WILSON", "JOHNSON", "DAVIES", "PATEL",
    "ROBINSON",
];

/// One child: given name (an index into [`NAMES`]), family name (into
/// [`FAMILIES`]), date of birth and postcode.
type Child = (usize, usize, String, String);

/// Fraction of records whose given name the attack recovers from `field`'s
/// filters.
fn attack(encoder: &Encoder, field: &str, population: &[Child]) -> f64 {
    let f = encoder
        .params()
        .fields
        .iter()
        .position(|e| e.field == field)
        .expect("an encoded field");
    let mut groups: HashMap<Vec<u64>, Vec<usize>> = HashMap::new();
    for (name, family, dob, postcode) in population {
        let full = format!("{} {}", NAMES[*name], FAMILIES[*family]);
        let e = encoder.encode(
            &Identity::new()
                .with("given_name", Some(NAMES[*name]))
                .with("full_name", Some(&full))
                .with("date_of_birth", Some(dob))
                .with("postcode", Some(postcode)),
        );
        groups
            .entry(e.filter(encoder.params(), f).to_vec())
            .or_default()
            .push(*name);
    }
    let mut by_size: Vec<Vec<usize>> = groups.into_values().collect();
    by_size.sort_by_key(|g| std::cmp::Reverse(g.len()));
    let recovered: usize = by_size
        .iter()
        .take(NAMES.len())
        .enumerate()
        .map(|(rank, group)| group.iter().filter(|&&name| name == rank).count())
        .sum();
    recovered as f64 / population.len() as f64
}

#[test]
fn salting_defeats_a_frequency_attack() {
    // 20,000 children: name frequencies falling like a Zipf law, birth years
    // spread over 18 years.
    let mut sequence = Sequence::new(0x2545_f491_4f6c_dd1d);
    let mut next = |n: usize| sequence.below(n);
    let weights: Vec<f64> = (1..=NAMES.len()).map(|r| 1.0 / r as f64).collect();
    let total: f64 = weights.iter().sum();
    let population: Vec<Child> = (0..20_000)
        .map(|_| {
            let mut x = next(1_000_000) as f64 / 1e6 * total;
            let name = weights
                .iter()
                .position(|w| {
                    x -= w;
                    x < 0.0
                })
                .unwrap_or(NAMES.len() - 1);
            let (family, year, day) = (next(FAMILIES.len()), 2007 + next(18), next(365));
            let dob = time_of(year as i32, day as u16);
            // A city's postcode districts (Leeds has about 30), the central
            // ones more populous.
            let district = next(10) + next(20);
            (name, family, dob, format!("LS{} 1AB", district + 1))
        })
        .collect();

    let key = SecretKey::from_bytes([4; 32]);
    // Version 5: names salted with the birth year.
    let hardened = LinkageParams::canonical_version(5);
    let mut plain = hardened.clone();
    plain.fields[0].salt = None;
    let on_plain = attack(
        &Encoder::new(&key, &plain).unwrap(),
        "given_name",
        &population,
    );
    let hardened_encoder = Encoder::new(&key, &hardened).unwrap();
    let on_hardened = attack(&hardened_encoder, "given_name", &population);
    let on_full_name = attack(&hardened_encoder, "full_name", &population);
    // Version 6: salted with the whole date of birth.
    let on_whole_date = attack(
        &Encoder::new(&key, &LinkageParams::canonical_version(6)).unwrap(),
        "given_name",
        &population,
    );
    println!(
        "frequency attack on given names: plain encodings {:.1}% of records re-identified, salted with the birth year {:.1}%, with the date of birth {:.1}%; on the full name salted with the postcode district {:.1}%",
        on_plain * 100.0,
        on_hardened * 100.0,
        on_whole_date * 100.0,
        on_full_name * 100.0
    );
    assert!(
        on_whole_date < on_hardened / 5.0,
        "a near-unique salt leaves the attack little: {on_whole_date} vs {on_hardened}"
    );
    // The full name, there to survive a wrong birth year, gives no more away.
    assert!(
        on_full_name <= on_hardened,
        "full name {on_full_name} vs given name {on_hardened}"
    );
    assert!(
        on_plain > 0.9,
        "the attack works on plain encodings: {on_plain}"
    );
    assert!(
        on_hardened < on_plain / 5.0,
        "salting defeats it: {on_hardened} vs {on_plain}"
    );
}

/// `YYYY-MM-DD` of day `day` (0 to 364) of `year`.
fn time_of(year: i32, day: u16) -> String {
    let mut month = 1;
    let mut left = day;
    for length in [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31] {
        if left < length {
            break;
        }
        left -= length;
        month += 1;
    }
    format!("{year}-{month:02}-{:02}", left + 1)
}
