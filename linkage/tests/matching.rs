//! Fuzzy linkage end to end inside the library: two organisations' records
//! of a small population (with typos, nicknames and moved postcodes) are
//! encoded and linked; known pairs link, twins do not, different NHS
//! pseudonyms never merge, and the result repeats exactly.

use joinery_crypto::keys::SecretKey;
use joinery_linkage::blocking::{Together, together};
use joinery_linkage::entities::Entities;
use joinery_linkage::{Encoder, Entity, Identity, LinkageParams, link};

const GIVEN: &[&str] = &[
    "AMELIA", "OLIVIA", "ISLA", "AVA", "MIA", "IVY", "LILY", "ISABELLA", "ROSIE", "SOPHIA",
    "GRACE", "FREYA", "EVIE", "ELLA", "WILLOW", "NOAH", "OLIVER", "GEORGE", "LEO", "ARTHUR",
    "MUHAMMAD", "HARRY", "OSCAR", "ARCHIE", "HENRY", "JACK", "THEO", "CHARLIE", "FREDDIE", "ALFIE",
];
const FAMILY: &[&str] = &[
    "SMITH", "JONES", "TAYLOR", "BROWN", "WILLIAMS", "WILSON", "JOHNSON", "DAVIES", "PATEL",
    "WRIGHT", "ROBINSON", "WOOD", "THOMPSON", "EVANS", "WALKER", "WHITE", "ROBERTS", "GREEN",
    "HALL", "THOMAS", "CLARKE", "JACKSON", "WOOD", "HUGHES", "EDWARDS", "HILL", "MOORE", "KHAN",
];

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

#[derive(Clone)]
struct Person {
    given: String,
    family: String,
    dob: String,
    sex: &'static str,
    postcode: String,
}

fn identity(p: &Person) -> Identity {
    Identity::new()
        .with("given_name", Some(&p.given))
        .with("family_name", Some(&p.family))
        .with("date_of_birth", Some(&p.dob))
        .with("sex", Some(p.sex))
        .with("postcode", Some(&p.postcode))
}

fn population(n: usize, rng: &mut Rng) -> Vec<Person> {
    (0..n)
        .map(|_| Person {
            given: GIVEN[rng.below(GIVEN.len())].to_owned(),
            family: FAMILY[rng.below(FAMILY.len())].to_owned(),
            dob: format!(
                "20{:02}-{:02}-{:02}",
                5 + rng.below(14),
                1 + rng.below(12),
                1 + rng.below(28)
            ),
            sex: if rng.below(2) == 0 { "female" } else { "male" },
            postcode: format!(
                "M{} {}{}{}",
                1 + rng.below(40),
                rng.below(10),
                char::from(b'A' + rng.below(26) as u8),
                char::from(b'A' + rng.below(26) as u8)
            ),
        })
        .collect()
}

/// The second organisation's copy of a person, sometimes with an error.
fn recorded(p: &Person, rng: &mut Rng) -> Person {
    let mut r = p.clone();
    match rng.below(10) {
        0 => {
            // A typo: one letter doubled.
            let at = 1 + rng.below(r.family.len() - 1);
            r.family.insert(at, r.family.as_bytes()[at - 1] as char);
        }
        1 => r.postcode = format!("M{} 1AA", 41 + rng.below(9)),
        _ => {}
    }
    r
}

fn entity(encoder: &Encoder, organisation: u32, p: &Person, nhs: Option<u8>) -> Entity {
    Entity {
        organisation,
        nhs: nhs.map(|n| [n; 32]),
        encoding: encoder.encode(&identity(p)),
    }
}

#[test]
fn known_pairs_link_twins_do_not_and_results_repeat() {
    let mut rng = Rng(0x5eed);
    let people = population(3000, &mut rng);
    let params = LinkageParams::canonical();
    let encoder = Encoder::new(&SecretKey::from_bytes([9; 32]), &params).unwrap();
    let mut entities = Vec::new();
    // Organisation 0 knows everyone; organisation 1 the first 2,000.
    for p in &people {
        entities.push(entity(&encoder, 0, p, None));
    }
    for p in &people[..2000] {
        entities.push(entity(&encoder, 1, &recorded(p, &mut rng), None));
    }
    // Twins: same family name, date of birth and postcode; different given
    // names. Each organisation knows both.
    let twins_of = |given: [&str; 2], family: &str, dob: &str, sex, postcode: &str| {
        given.map(|given| Person {
            given: given.into(),
            family: family.into(),
            dob: dob.into(),
            sex,
            postcode: postcode.into(),
        })
    };
    let [twin_a, twin_b] = twins_of(
        ["ZARA", "ZOE"],
        "OKONKWO",
        "2014-06-09",
        "female",
        "M50 2QT",
    );
    let twins = entities.len();
    for (org, p) in [(0, &twin_a), (0, &twin_b), (1, &twin_a), (1, &twin_b)] {
        entities.push(entity(&encoder, org, p, None));
    }
    // Twins of whom each organisation knows only one: nothing but the
    // given name tells them apart, and that must be enough.
    let [twin_c, twin_d] = twins_of(
        ["HARRY", "OSCAR"],
        "ADEYEMI",
        "2011-02-17",
        "male",
        "M12 7HF",
    );
    let lone_twins = entities.len();
    entities.push(entity(&encoder, 0, &twin_c, None));
    entities.push(entity(&encoder, 1, &twin_d, None));
    // Every 25th person has a twin, known wherever the person is: the
    // households the model learns twins from.
    let households = entities.len();
    let mut twin_of = Vec::new();
    for i in (0..3000).step_by(25) {
        let at = GIVEN.iter().position(|g| *g == people[i].given).unwrap();
        let twin = Person {
            given: GIVEN[(at + 11) % GIVEN.len()].to_owned(),
            ..people[i].clone()
        };
        twin_of.push((i, entities.len()));
        entities.push(entity(&encoder, 0, &twin, None));
        if i < 2000 {
            twin_of.push((3000 + i, entities.len()));
            entities.push(entity(&encoder, 1, &twin, None));
        }
    }

    let result = link(entities.clone(), &params);
    let people_of = &result.people;
    let mut linked = 0;
    for i in 0..2000 {
        if people_of[i] == people_of[3000 + i] {
            linked += 1;
        }
    }
    assert!(linked >= 1960, "known pairs linked: {linked} of 2000");
    // No record of the 1,000 people only organisation 0 knows is linked.
    for (i, &person) in people_of.iter().enumerate().take(3000).skip(2000) {
        assert_eq!(person, i as u32, "person {i} stands alone");
    }
    // Each twin links to herself across organisations, never to her sister.
    assert_eq!(people_of[twins], people_of[twins + 2]);
    assert_eq!(people_of[twins + 1], people_of[twins + 3]);
    assert_ne!(people_of[twins], people_of[twins + 1]);
    assert_ne!(
        people_of[lone_twins],
        people_of[lone_twins + 1],
        "twins each known to one organisation stay apart"
    );
    let twins_merged = twin_of
        .iter()
        .filter(|&&(person, twin)| people_of[person] == people_of[twin])
        .count();
    assert_eq!(twins_merged, 0, "of {} twins", entities.len() - households);

    // The same keys and input give the same people.
    assert_eq!(link(entities, &params).people, result.people);
}

#[test]
fn records_with_different_nhs_pseudonyms_never_merge_however_alike() {
    let mut rng = Rng(7);
    let people = population(500, &mut rng);
    let params = LinkageParams::canonical();
    let encoder = Encoder::new(&SecretKey::from_bytes([3; 32]), &params).unwrap();
    let mut entities: Vec<Entity> = people
        .iter()
        .map(|p| entity(&encoder, 0, p, None))
        .collect();
    entities.extend(people.iter().map(|p| entity(&encoder, 1, p, None)));
    // The same identity at both, but different NHS numbers.
    entities.push(entity(&encoder, 0, &people[0], Some(1)));
    entities.push(entity(&encoder, 2, &people[0], Some(2)));
    let n = entities.len();
    let result = link(entities.clone(), &params);
    assert_ne!(result.people[n - 2], result.people[n - 1]);
    // Ordinary pairs still link.
    assert_eq!(result.people[1], result.people[501]);
}

#[test]
fn encodings_under_another_key_do_not_link() {
    let mut rng = Rng(11);
    let people = population(500, &mut rng);
    let params = LinkageParams::canonical();
    let one = Encoder::new(&SecretKey::from_bytes([1; 32]), &params).unwrap();
    let two = Encoder::new(&SecretKey::from_bytes([2; 32]), &params).unwrap();
    let mut entities: Vec<Entity> = people.iter().map(|p| entity(&one, 0, p, None)).collect();
    entities.extend(people.iter().map(|p| entity(&two, 1, p, None)));
    let result = link(entities.clone(), &params);
    assert_eq!(result.stats.candidate_pairs, 0, "no blocking key is shared");
    assert!((0..1000).all(|i| result.people[i] == i as u32));
}

#[test]
fn a_shared_nhs_number_on_two_different_children_is_reported() {
    let mut rng = Rng(23);
    let people = population(2000, &mut rng);
    let params = LinkageParams::canonical();
    let encoder = Encoder::new(&SecretKey::from_bytes([5; 32]), &params).unwrap();
    let mut entities: Vec<Entity> = people
        .iter()
        .enumerate()
        .map(|(i, p)| entity(&encoder, 0, p, Some((i % 200) as u8)))
        .collect();
    // Organisation 1 holds the same people under the same NHS numbers...
    entities.extend(
        people[..200]
            .iter()
            .enumerate()
            .map(|(i, p)| entity(&encoder, 1, p, Some(i as u8))),
    );
    let result = link(entities.clone(), &params);
    // ...but its records 0..200 share a number with 9 other children each
    // at organisation 0: those pairs are conflicts, the true ones are not.
    let conflicts = &result.nhs_conflicts;
    let true_pairs = conflicts
        .iter()
        .filter(|c| c.a as usize == c.b as usize - 2000)
        .count();
    assert_eq!(true_pairs, 0, "the same child is no conflict");
    assert!(
        conflicts.len() > 1500,
        "{} of 1,800 borrowed numbers reported",
        conflicts.len()
    );
}

#[test]
fn a_block_too_large_to_walk_whole_is_split_and_its_pairs_still_link() {
    // Every child a Smith born in 2012: both organisations' records share
    // one family-name-and-birth-year key, a block of 6,000, over the cap.
    let mut rng = Rng(0xb10c);
    let people: Vec<Person> = population(3000, &mut rng)
        .into_iter()
        .map(|p| Person {
            family: "SMITH".into(),
            dob: format!("2012{}", &p.dob[4..]),
            ..p
        })
        .collect();
    // Version 5 keys the family name's Soundex with the birth year: one
    // block of every Smith born in 2012.
    let params = LinkageParams::canonical_version(5);
    let encoder = Encoder::new(&SecretKey::from_bytes([9; 32]), &params).unwrap();
    let mut entities: Vec<Entity> = people
        .iter()
        .map(|p| entity(&encoder, 0, p, None))
        .collect();
    for p in &people {
        entities.push(entity(&encoder, 1, &recorded(p, &mut rng), None));
    }
    // Splitting keeps every record of a child beside its other record in
    // some piece: no true pair is left uncompared.
    let pairs: Vec<(usize, usize)> = (0..3000).map(|i| (i, 3000 + i)).collect();
    let numbered = Entities::numbered(entities.clone(), &params);
    let apart = together(&numbered, &params, &pairs)
        .into_iter()
        .filter(|t| *t != Together::Compared)
        .count();
    assert_eq!(apart, 0, "true pairs blocking never compared");
    let result = link(entities, &params);
    assert_eq!(result.stats.blocks_split, 1, "the one oversized block");
    assert_eq!(result.stats.pieces_cut_into_runs, 0);
    let linked = (0..3000)
        .filter(|&i| result.people[i] == result.people[3000 + i])
        .count();
    // One child in eight here has a namesake (same given name, date of
    // birth and sex, differing only by postcode), and one record in ten a
    // family-name typo or a house move: those pairs are rightly doubtful,
    // the rest link.
    assert!(linked >= 2600, "pairs linked: {linked} of 3000");
}
