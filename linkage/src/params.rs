//! Linkage parameters: which fields are encoded and how, and which blocking
//! keys are made. Versioned, and part of the data-sharing agreement, so every
//! agency encodes the same way; a change of parameters means a full re-link.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How every party encodes identities for fuzzy linkage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkageParams {
    /// Bumped whenever anything below changes.
    pub version: u32,
    /// One Bloom filter per field.
    pub fields: Vec<FieldEncoding>,
    /// Each rule is one keyed blocking key: records are compared only when
    /// they share at least one.
    pub blocking: Vec<Vec<KeyPart>>,
    /// Pairs whose Fellegi–Sunter match probability reaches this link.
    #[serde(default = "default_threshold")]
    pub threshold: f64,
}

/// High, because joining two children's records is worse than missing a
/// link: a false link can put one child's history in another's file.
fn default_threshold() -> f64 {
    0.99
}

/// How one field becomes a Bloom filter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldEncoding {
    /// The canonical field (`given_name`, `family_name`, `date_of_birth`,
    /// `sex`, `postcode`, or another the mapping provides).
    pub field: String,
    /// What this encoding is called where the field is encoded more than
    /// once (under another salt, standing in for the field's first
    /// encoding: the field is then judged at the better level of the two,
    /// [`crate::score::StandIn::best_of`]): its key, its bit permutation and
    /// what stands in for what go by this name. Default: the field's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub tokens: Tokens,
    /// Filter length in bits: a power of two, from 64 to 4096.
    pub bits: u32,
    /// Bit positions set per token, 1 to 16.
    pub hashes: u32,
    /// A stable attribute mixed into every token's hash (for example the
    /// birth year), so equal names in different strata give unrelated bits:
    /// a frequency attack can no longer pool all occurrences of a name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<KeyPart>,
    /// Fields this one stands in for where they disagree entirely (as
    /// fields salted with a birth year do when one record has the year
    /// wrong): the pair is then judged on this field instead of them, and
    /// otherwise on them, never on both.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stands_in_for: Vec<String>,
    /// Add the tokens of the value's full forms when it is a nickname
    /// (Bill: also William's), so a short form and its full name agree in
    /// part ([`crate::nicknames`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub nicknames: bool,
}

/// How a field's value is cut into tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Tokens {
    /// Overlapping pairs of characters, without boundary padding.
    Bigrams,
    /// Overlapping pairs of characters, the first letter also a pair of
    /// its own (`_H`). A short name has few pairs, so one wrong letter
    /// inside it leaves too few alike (HUGO and HUBO: Dice 0.33 unpadded,
    /// about 0.5 padded), while different names stay apart. Only the start
    /// is marked: the commonest endings (`A_` in Freya, Riya, Ava) would
    /// make twins' names look alike. The marked first letter is a frequent
    /// token a pattern-mining attacker can look for; the salt spreads it
    /// over a different set of bits per birth year.
    PaddedBigrams,
    /// A date `YYYY-MM-DD` as its year, month, day and month-day: a swapped
    /// day and month or a one-part typo keeps partial similarity.
    DateParts,
    /// A date `YYYY-MM-DD` as its year, and its day and month in either
    /// order: a day and month swapped (a date written the American way)
    /// agree in full, where by parts they share only the year, as a
    /// sibling born the same year does.
    DateAnyOrder,
    /// The whole value as one token.
    Whole,
}

/// How a field's agreement level is read from two of its filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Similarity {
    /// The Dice coefficient of their bits (to version 6).
    Bits,
    /// The Dice coefficient of the tokens they were made from, estimated
    /// from their bits ([`crate::bloom::token_dice`]), from version 7. A
    /// field judged at the best of several encodings of different sizes
    /// otherwise took the level of the smallest, whose bits two different
    /// names share most by chance: twins with names a few letters apart
    /// were read as one child's name with a typo.
    Tokens,
}

/// One part of a blocking key (or of a salt): a field, taken whole, by its
/// Soundex code, or by its first characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyPart {
    pub field: String,
    #[serde(default)]
    pub take: Take,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Take {
    #[default]
    Whole,
    Soundex,
    /// The first n characters.
    Prefix(usize),
    /// The text before the first space (a postcode's district).
    FirstWord,
    /// The last n characters (`MM-DD` of a date, for n = 5).
    Suffix(usize),
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParamsError {
    #[error("linkage field {field}: bits must be a power of two from 64 to 4096, not {bits}")]
    Bits { field: String, bits: u32 },
    #[error("linkage field {field}: hashes must be 1 to 16, not {hashes}")]
    Hashes { field: String, hashes: u32 },
    #[error("linkage field {0} is encoded twice under one name")]
    Repeated(String),
    #[error("linkage threshold must be between 0 and 1, not {0}")]
    Threshold(f64),
    #[error("linkage needs at least one field and one blocking rule")]
    Empty,
    #[error("linkage encodes at most {MAX_FIELDS} fields, not {0}")]
    TooManyFields(usize),
    #[error("linkage field {field} stands in for {other}, which is not an encoded field")]
    StandsInFor { field: String, other: String },
}

impl FieldEncoding {
    /// The encoding's name: [`Self::name`] if given, else the field's.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.field)
    }
}

impl LinkageParams {
    /// Checks what the encoder relies on.
    pub fn validate(&self) -> Result<(), ParamsError> {
        if self.fields.is_empty() || self.blocking.iter().all(Vec::is_empty) {
            return Err(ParamsError::Empty);
        }
        if self.fields.len() > MAX_FIELDS {
            return Err(ParamsError::TooManyFields(self.fields.len()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for f in &self.fields {
            if !f.bits.is_power_of_two() || !(64..=4096).contains(&f.bits) {
                return Err(ParamsError::Bits {
                    field: f.field.clone(),
                    bits: f.bits,
                });
            }
            if !(1..=16).contains(&f.hashes) {
                return Err(ParamsError::Hashes {
                    field: f.field.clone(),
                    hashes: f.hashes,
                });
            }
            if !seen.insert(f.name()) {
                return Err(ParamsError::Repeated(f.name().to_owned()));
            }
        }
        for f in &self.fields {
            if let Some(other) = f.stands_in_for.iter().find(|o| !seen.contains(o.as_str())) {
                return Err(ParamsError::StandsInFor {
                    field: f.name().to_owned(),
                    other: other.clone(),
                });
            }
        }
        if !(0.0..=1.0).contains(&self.threshold) {
            return Err(ParamsError::Threshold(self.threshold));
        }
        Ok(())
    }

    /// Words (64 bits) of all the fields' filters together.
    pub fn words(&self) -> usize {
        self.fields.iter().map(|f| f.bits as usize / 64).sum()
    }

    /// The indices of the fields a blocking rule's parts take, those parts
    /// chosen by how they take them. A field taken whole is equal in every
    /// pair the rule finds, so every encoding of it is listed; a field
    /// taken in part (its Soundex code, a prefix), only its first.
    pub fn fields_of(&self, rule: &[KeyPart], taking: impl Fn(Take) -> bool) -> Vec<usize> {
        let mut fields = Vec::new();
        for part in rule.iter().filter(|part| taking(part.take)) {
            let encodings = self
                .fields
                .iter()
                .enumerate()
                .filter(|(_, f)| f.field == part.field)
                .map(|(i, _)| i);
            if part.take == Take::Whole {
                fields.extend(encodings);
            } else {
                fields.extend(encodings.take(1));
            }
        }
        fields
    }

    /// Where field `f`'s filter lies among an encoding's words.
    pub fn field_words(&self, f: usize) -> std::ops::Range<usize> {
        let start: usize = self.fields[..f].iter().map(|f| f.bits as usize / 64).sum();
        start..start + self.fields[f].bits as usize / 64
    }

    /// How agreement levels are read from filters: by their tokens from
    /// version 7, by their bits before (whose stored models were fitted so).
    pub fn similarity(&self) -> Similarity {
        match self.version {
            ..=6 => Similarity::Bits,
            _ => Similarity::Tokens,
        }
    }

    /// The newest canonical parameters.
    pub fn canonical() -> Self {
        Self::canonical_version(LATEST_VERSION)
    }

    /// The parameters for the canonical person fields as they are at
    /// `version` (an agreement's `linkage.encoding.version`; a later one
    /// than there is gets the newest recipe, 7):
    ///
    /// - 1: names salted with the birth year, the date of birth by parts,
    ///   sex, postcode; blocking on the family name's Soundex with the birth
    ///   year, on the whole date of birth, and on the given name's Soundex
    ///   with the postcode district.
    /// - 2: as 1, and the full name (given and family) salted with the day
    ///   and month of birth, standing in for the two names where a wrong
    ///   birth year makes them disagree entirely; blocking also on the
    ///   family name's Soundex with the day and month of birth.
    /// - 3: as 2, but the full name salted with the postcode district (so it
    ///   stands in also where the date of birth is missing), and a given
    ///   name that is a nickname encoded with its full forms too.
    /// - 4: as 3 (agents encode alike), linking pairs from a match
    ///   probability of [`RULE_JUDGED_THRESHOLD`] rather than 0.99.
    /// - 5: as 4, the given name cut into pairs with its first letter
    ///   marked ([`Tokens::PaddedBigrams`]): a one-letter typo in a short
    ///   given name no longer looks like a twin's different name. Measured
    ///   with `joinery-bench linkage --fuzzy-only` on `joinery synth
    ///   --profile messy`, 100,000 children: seed 7 F1 0.9748 -> 0.9802
    ///   (wrong links within households 39 -> 20, between twins 21 -> 6 of
    ///   2,773 pairs), seed 11 0.9745 -> 0.9803 (households 17 -> 14, twins
    ///   14 -> 11 of 2,678); 20,000 children 0.9788 -> 0.9831; the frequency
    ///   attack test unchanged (1.8%).
    /// - 6: hardened against a gateway operator who holds a register of the
    ///   population (`docs/linkage-privacy.md`): every field salted with a
    ///   value the gateway never holds in clear — the names and the
    ///   postcode with the whole date of birth, the date of birth with the
    ///   family name's Soundex code — so equal values in different records
    ///   give unrelated filters, and similarity, frequency and bit patterns
    ///   say nothing across records of different salts. A wrong date of
    ///   birth would then make the names disagree entirely, so each field is
    ///   encoded again, smaller, under other salts, standing in for it where
    ///   it disagrees entirely, judged at the best of its encodings
    ///   (`hardened_fields`, [`crate::score::StandIn::best_of`]).
    ///   Tokens are
    ///   hashed under a key made from the salt
    ///   ([`crate::encode::SALT_KEYS_FROM`]). Blocking keys each with a part
    ///   the gateway does not hold in clear when the agreement keeps only
    ///   the birth year and postcode area: the family name's Soundex with the
    ///   birth month, and with the day and month; the given name's with the
    ///   date of birth, and with the district; both Soundex codes; the date
    ///   of birth with the district. Threshold as 5.
    /// - 7: as 6, and the date of birth encoded again with its day and
    ///   month in either order ([`Tokens::DateAnyOrder`]), under the same
    ///   salt as the date itself: with the birth month in a blocking key, a
    ///   swapped day and month were found only where the names and the
    ///   district agreed, and were then judged like same-name siblings;
    ///   and every level read from the tokens' Dice, not the bits'
    ///   ([`Self::similarity`]). Measured with `joinery-bench linkage
    ///   --fuzzy-only` on `joinery synth --profile messy --seed 7`,
    ///   100,000 children: F1 0.9736 -> 0.9812 (version 5 0.9803), wrong
    ///   links within households 31 -> 10 (version 5 18).
    pub fn canonical_version(version: u32) -> Self {
        let birth_year = KeyPart {
            field: "date_of_birth".into(),
            take: Take::Prefix(4),
        };
        let field = |name: &str, tokens, bits, hashes, salt: Option<&KeyPart>| FieldEncoding {
            field: name.into(),
            name: None,
            tokens,
            bits,
            hashes,
            salt: salt.cloned(),
            stands_in_for: Vec::new(),
            nicknames: false,
        };
        let part = |name: &str, take| KeyPart {
            field: name.into(),
            take,
        };
        let mut params = Self {
            version,
            fields: vec![
                field("given_name", Tokens::Bigrams, 512, 12, Some(&birth_year)),
                field("family_name", Tokens::Bigrams, 512, 12, Some(&birth_year)),
                field("date_of_birth", Tokens::DateParts, 256, 8, None),
                field("sex", Tokens::Whole, 64, 4, None),
                field("postcode", Tokens::Bigrams, 256, 8, None),
            ],
            blocking: vec![
                vec![part("family_name", Take::Soundex), birth_year.clone()],
                vec![part("date_of_birth", Take::Whole)],
                vec![
                    part("given_name", Take::Soundex),
                    part("postcode", Take::FirstWord),
                ],
            ],
            threshold: match version {
                ..=3 => default_threshold(),
                _ => RULE_JUDGED_THRESHOLD,
            },
        };
        let month_day = KeyPart {
            field: "date_of_birth".into(),
            take: Take::Suffix(5),
        };
        if version >= 2 {
            // Version 3 salts the full name with the postcode district, not
            // the day and month of birth: it then stands in also where the
            // date of birth is missing or a placeholder (so the names,
            // salted with its year, are missing too).
            let salt = match version {
                2 => month_day.clone(),
                _ => part("postcode", Take::FirstWord),
            };
            params.fields.push(FieldEncoding {
                stands_in_for: vec!["given_name".into(), "family_name".into()],
                ..field("full_name", Tokens::Bigrams, 512, 12, Some(&salt))
            });
            params
                .blocking
                .push(vec![part("family_name", Take::Soundex), month_day]);
        }
        if version >= 3 {
            params.fields[0].nicknames = true;
        }
        if version >= 5 {
            params.fields[0].tokens = Tokens::PaddedBigrams;
        }
        if version >= 6 {
            params.fields = Self::hardened_fields(version);
            // Each key with a part the gateway does not hold in clear (a
            // birth month, a district, a whole date), so the keys' counts
            // within what it does hold single out few values.
            let date = |take| part("date_of_birth", take);
            params.blocking = vec![
                vec![part("family_name", Take::Soundex), date(Take::Prefix(7))],
                vec![part("given_name", Take::Soundex), date(Take::Whole)],
                vec![
                    part("given_name", Take::Soundex),
                    part("postcode", Take::FirstWord),
                ],
                vec![part("family_name", Take::Soundex), date(Take::Suffix(5))],
                vec![
                    part("given_name", Take::Soundex),
                    part("family_name", Take::Soundex),
                ],
                vec![date(Take::Whole), part("postcode", Take::FirstWord)],
            ];
        }
        params
    }

    /// The fields of version 6, each salted with a value the gateway does
    /// not hold in clear, then each again under other salts (`name`d, at
    /// half the bits): a field is judged at the best level of its
    /// encodings. Chosen by measurement (`docs/linkage-privacy.md`): with
    /// only the first encodings, F1 fell 0.9833 -> 0.9599 on `joinery synth
    /// --profile messy --children 20000`, every pair with a wrong date of
    /// birth losing its names; with these, 0.9880. From version 7 the date
    /// of birth also in either order (see [`Self::canonical_version`]).
    fn hardened_fields(version: u32) -> Vec<FieldEncoding> {
        let salt = |field: &str, take| {
            Some(KeyPart {
                field: field.into(),
                take,
            })
        };
        let date_of_birth = || salt("date_of_birth", Take::Whole);
        let postcode = || salt("postcode", Take::Whole);
        let given_soundex = || salt("given_name", Take::Soundex);
        let family_soundex = || salt("family_name", Take::Soundex);
        let field = |field: &str, tokens, bits, hashes, salt| FieldEncoding {
            field: field.into(),
            name: None,
            tokens,
            bits,
            hashes,
            salt,
            stands_in_for: Vec::new(),
            nicknames: false,
        };
        let again = |first: &FieldEncoding, name: &str, salt, stands_in_for: &[&str]| {
            let (bits, hashes) = match first.bits {
                512 => (256, 8),
                _ => (128, 6),
            };
            FieldEncoding {
                name: Some(name.into()),
                bits,
                hashes,
                salt,
                stands_in_for: stands_in_for.iter().map(|&s| s.into()).collect(),
                ..first.clone()
            }
        };
        let given = FieldEncoding {
            nicknames: true,
            ..field(
                "given_name",
                Tokens::PaddedBigrams,
                512,
                12,
                date_of_birth(),
            )
        };
        let family = field("family_name", Tokens::Bigrams, 512, 12, date_of_birth());
        let date = field("date_of_birth", Tokens::DateParts, 256, 8, family_soundex());
        let place = field("postcode", Tokens::Bigrams, 256, 8, date_of_birth());
        let copies = [
            again(&given, "given_name_by_place", postcode(), &["given_name"]),
            again(
                &family,
                "family_name_by_place",
                postcode(),
                &["family_name"],
            ),
            again(
                &date,
                "date_of_birth_by_given",
                given_soundex(),
                &["date_of_birth"],
            ),
            again(&place, "postcode_by_given", given_soundex(), &["postcode"]),
            again(
                &given,
                "given_name_by_family",
                family_soundex(),
                &["given_name", "given_name_by_place"],
            ),
            again(
                &family,
                "family_name_by_given",
                given_soundex(),
                &["family_name", "family_name_by_place"],
            ),
            again(
                &date,
                "date_of_birth_by_place",
                postcode(),
                &["date_of_birth", "date_of_birth_by_given"],
            ),
        ];
        let any_order = FieldEncoding {
            tokens: Tokens::DateAnyOrder,
            ..again(
                &date,
                "date_of_birth_any_order",
                family_soundex(),
                &["date_of_birth"],
            )
        };
        let sex = field("sex", Tokens::Whole, 64, 4, None);
        [given, family, date, sex, place]
            .into_iter()
            .chain(copies)
            .chain((version >= 7).then_some(any_order))
            .collect()
    }
}

/// Encodings per parameters: a pair's agreement levels are three bits per
/// field of one 64-bit pattern ([`crate::score::Pattern`]).
pub const MAX_FIELDS: usize = 21;

/// The recipe the defaults use (the benches, [`LinkageParams::canonical`]).
/// Versions 6 and 7, hardened against a gateway operator holding a
/// register, are chosen by an agreement (`linkage.encoding.version: 7`):
/// they are meant with only the birth year and postcode area in clear,
/// which the example agreements and the demo do not keep yet, and at a
/// million children of the messy profile version 7's precision is 0.9986
/// against version 5's 0.9992 (its F1 0.9721 against 0.9592, and fewer
/// wrong links within households at every size measured:
/// `docs/linkage-privacy.md`).
pub const LATEST_VERSION: u32 = 5;

/// The canonical threshold from version 4. A pair that would link is judged
/// again against how often pairs within one organisation in its block show
/// its pattern (twins, siblings: [`crate::score`]), and that judgement puts
/// a one-letter given-name typo, a changed family name or a birth date a day
/// out, with everything else agreeing, between 0.95 and 0.99. Measured
/// with `joinery-bench linkage --fuzzy-only` on `joinery synth --profile
/// messy`: recall 0.934 -> 0.952 at 100,000 children (precision 0.9996 ->
/// 0.9994, twins wrongly linked 22 -> 23 of 2,773 pairs), F1 0.9765 ->
/// 0.9786 at 20,000; FEBRL 4 unchanged.
pub const RULE_JUDGED_THRESHOLD: f64 = 0.95;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_five_pads_only_the_given_name() {
        let (four, five) = (
            LinkageParams::canonical_version(4),
            LinkageParams::canonical_version(5),
        );
        assert_eq!(five.fields[0].field, "given_name");
        assert_eq!(
            (four.fields[0].tokens, five.fields[0].tokens),
            (Tokens::Bigrams, Tokens::PaddedBigrams)
        );
        assert_eq!(&four.fields[1..], &five.fields[1..]);
        assert_eq!(
            (&four.blocking, four.threshold),
            (&five.blocking, five.threshold)
        );
    }

    #[test]
    fn version_four_encodes_as_three_and_links_from_the_lower_threshold() {
        let (three, four) = (
            LinkageParams::canonical_version(3),
            LinkageParams::canonical_version(4),
        );
        assert_eq!(
            (&three.fields, &three.blocking),
            (&four.fields, &four.blocking)
        );
        assert_eq!(three.threshold, 0.99);
        assert_eq!(four.threshold, RULE_JUDGED_THRESHOLD);
    }

    #[test]
    fn canonical_parameters_are_valid_and_bad_ones_are_named() {
        LinkageParams::canonical().validate().unwrap();
        for version in 1..=7 {
            LinkageParams::canonical_version(version)
                .validate()
                .unwrap();
        }
        let mut p = LinkageParams::canonical_version(5);
        p.fields.retain(|f| f.field != "family_name");
        assert_eq!(
            p.validate(),
            Err(ParamsError::StandsInFor {
                field: "full_name".into(),
                other: "family_name".into()
            })
        );
        let mut p = LinkageParams::canonical_version(6);
        p.fields.retain(|f| f.name() != "family_name_by_place");
        assert_eq!(
            p.validate(),
            Err(ParamsError::StandsInFor {
                field: "family_name_by_given".into(),
                other: "family_name_by_place".into()
            })
        );
        let mut p = LinkageParams::canonical_version(6);
        let first = p.fields[0].clone();
        p.fields.extend((0..10).map(|i| FieldEncoding {
            name: Some(format!("given_name_{i}")),
            ..first.clone()
        }));
        assert_eq!(p.validate(), Err(ParamsError::TooManyFields(22)));
        let mut p = LinkageParams::canonical();
        let again = p.fields[0].clone();
        p.fields.push(again);
        assert_eq!(
            p.validate(),
            Err(ParamsError::Repeated("given_name".into()))
        );
        let mut p = LinkageParams::canonical();
        p.fields[0].bits = 500;
        assert_eq!(
            p.validate(),
            Err(ParamsError::Bits {
                field: "given_name".into(),
                bits: 500
            })
        );
        let mut p = LinkageParams::canonical();
        p.fields[1].hashes = 40;
        assert!(matches!(p.validate(), Err(ParamsError::Hashes { .. })));
    }
}
