//! Where a source is, in its reader's own terms: the spool keeps it with
//! the batches and gives it back to the same reader to continue. Only
//! `line`, where the next row starts, means the same to every reader (it is
//! shown to operators); the rest is the reader's own state, opaque to
//! everything else (a CSV reader's byte offset, an XML reader's count of
//! records and of rows within one, a SQL reader's watermark cursor).
//!
//! A reader gives its position before every row, so taking one is cheap:
//! the reader's state is held as it is, boxed, and turned into fields only
//! when the spool writes it. In `checkpoints.json` those fields sit beside
//! `line`, the layout agents have always written, so a spool from an
//! earlier release resumes.

use std::fmt;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::SourceError;

/// A position: the common line and the reader's own state.
#[derive(Debug)]
pub struct Position {
    pub line: u64,
    state: Box<dyn ReaderState>,
}

/// A reader's own state, as the reader holds it or as the spool read it
/// back (fields of JSON).
trait ReaderState: fmt::Debug + Send + Sync {
    /// Its fields, `line` among them if it has one.
    fn fields(&self) -> Map<String, Value>;
    fn boxed_clone(&self) -> Box<dyn ReaderState>;
}

impl<T: Serialize + Clone + fmt::Debug + Send + Sync + 'static> ReaderState for T {
    fn fields(&self) -> Map<String, Value> {
        match serde_json::to_value(self) {
            Ok(Value::Object(fields)) => fields,
            // A reader's state is a struct of plain fields, always an object.
            _ => Map::new(),
        }
    }

    fn boxed_clone(&self) -> Box<dyn ReaderState> {
        Box::new(self.clone())
    }
}

impl Position {
    /// The position a reader's `state` (a struct of plain fields, one of
    /// them `line`, the line where the next row starts) describes.
    pub fn of<S>(line: u64, state: &S) -> Self
    where
        S: Serialize + Clone + fmt::Debug + Send + Sync + 'static,
    {
        Self {
            line,
            state: Box::new(state.clone()),
        }
    }

    /// The reader's state this position holds; a position that does not
    /// hold what the reader needs (another reader's, or edited by hand) is
    /// refused, naming `path`.
    pub fn state<S: DeserializeOwned>(&self, path: &Path) -> Result<S, SourceError> {
        let mut fields = self.state.fields();
        fields.insert("line".to_owned(), self.line.into());
        serde_json::from_value(Value::Object(fields)).map_err(|e| SourceError::Format {
            path: path.to_owned(),
            detail: format!(
                "the spool's checkpoint for this file was not written by its reader ({e}); \
                 `joinery agent resend --yes --source` it to read it from the start"
            ),
        })
    }

    /// The fields written to the spool, `line` first.
    fn stored(&self) -> Stored {
        let mut state = self.state.fields();
        state.remove("line");
        Stored {
            line: self.line,
            state,
        }
    }
}

/// A position as the spool writes and reads it: `line` and the state's
/// other fields beside it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    line: u64,
    #[serde(flatten)]
    state: Map<String, Value>,
}

impl Default for Position {
    fn default() -> Self {
        Self {
            line: 0,
            state: Box::new(Map::new()),
        }
    }
}

impl Clone for Position {
    fn clone(&self) -> Self {
        Self {
            line: self.line,
            state: self.state.boxed_clone(),
        }
    }
}

impl PartialEq for Position {
    fn eq(&self, other: &Self) -> bool {
        self.line == other.line && self.stored().state == other.stored().state
    }
}

impl Eq for Position {}

impl Serialize for Position {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.stored().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Position {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let Stored { line, state } = Stored::deserialize(deserializer)?;
        Ok(Self {
            line,
            state: Box::new(state),
        })
    }
}
