//! Small helpers for hand-written binary conversions: big-endian integers, length-prefixed bytes
//! and strings, booleans, options and lists, read with checks that return errors instead of
//! panicking on short or malformed input. (A payload can also derive its conversion from serde:
//! see [`crate::sdk::Compact`].)
//!
//! The layouts: a boolean is one byte, 0 or 1 (any other value is an error); an option is a
//! boolean (present or not) followed by the value when present; a list is a two-byte big-endian
//! count followed by that many items; strings are length-prefixed bytes that must be UTF-8.

use crate::sdk::Error;

/// Appends big-endian fields to a buffer.
#[derive(Debug, Default)]
pub struct Writer {
    bytes: Vec<u8>,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Writer::default()
    }

    /// One byte.
    pub fn u8(mut self, value: u8) -> Self {
        self.bytes.push(value);
        self
    }

    /// Two bytes, big-endian.
    pub fn u16(mut self, value: u16) -> Self {
        self.bytes.extend_from_slice(&value.to_be_bytes());
        self
    }

    /// Four bytes, big-endian.
    pub fn u32(mut self, value: u32) -> Self {
        self.bytes.extend_from_slice(&value.to_be_bytes());
        self
    }

    /// Eight bytes, big-endian.
    pub fn u64(mut self, value: u64) -> Self {
        self.bytes.extend_from_slice(&value.to_be_bytes());
        self
    }

    /// Eight bytes, big-endian two's complement.
    pub fn i64(mut self, value: i64) -> Self {
        self.bytes.extend_from_slice(&value.to_be_bytes());
        self
    }

    /// A one-byte length and up to 255 bytes.
    pub fn short_bytes(self, value: &[u8]) -> Result<Self, Error> {
        let len = u8::try_from(value.len()).map_err(|_| {
            Error::invalid(format!("{} bytes exceed the 255-byte limit", value.len()))
        })?;
        Ok(self.u8(len).raw(value))
    }

    /// A two-byte length and up to 65,535 bytes.
    pub fn long_bytes(self, value: &[u8]) -> Result<Self, Error> {
        let len = u16::try_from(value.len()).map_err(|_| {
            Error::invalid(format!("{} bytes exceed the 65535-byte limit", value.len()))
        })?;
        Ok(self.u16(len).raw(value))
    }

    /// One byte: 1 for true, 0 for false.
    pub fn bool(self, value: bool) -> Self {
        self.u8(u8::from(value))
    }

    /// A one-byte length and up to 255 bytes of UTF-8.
    pub fn short_str(self, value: &str) -> Result<Self, Error> {
        self.short_bytes(value.as_bytes())
    }

    /// A two-byte length and up to 65,535 bytes of UTF-8.
    pub fn long_str(self, value: &str) -> Result<Self, Error> {
        self.long_bytes(value.as_bytes())
    }

    /// A presence byte (as [`Writer::bool`]), then the value written by `write` when present.
    pub fn option<T>(
        self,
        value: Option<T>,
        write: impl FnOnce(Self, T) -> Result<Self, Error>,
    ) -> Result<Self, Error> {
        match value {
            None => Ok(self.bool(false)),
            Some(value) => write(self.bool(true), value),
        }
    }

    /// A two-byte count (at most 65,535 items), then each item written by `write`.
    pub fn list<T, I>(
        self,
        items: I,
        mut write: impl FnMut(Self, T) -> Result<Self, Error>,
    ) -> Result<Self, Error>
    where
        I: IntoIterator<Item = T>,
        I::IntoIter: ExactSizeIterator,
    {
        let mut items = items.into_iter();
        let count = u16::try_from(items.len()).map_err(|_| {
            Error::invalid(format!("{} items exceed the 65535-item limit", items.len()))
        })?;
        items.try_fold(self.u16(count), &mut write)
    }

    /// Bytes without a length.
    pub fn raw(mut self, value: &[u8]) -> Self {
        self.bytes.extend_from_slice(value);
        self
    }

    /// The encoded bytes.
    pub fn finish(self) -> Vec<u8> {
        self.bytes
    }
}

/// Reads big-endian fields from a byte slice; every read checks the remaining length.
#[derive(Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.bytes.len() < n {
            return Err(Error::invalid(format!(
                "truncated: needed {n} more bytes, {} left",
                self.bytes.len()
            )));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.array::<1>()?[0])
    }

    /// Two bytes, big-endian.
    pub fn u16(&mut self) -> Result<u16, Error> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    /// Four bytes, big-endian.
    pub fn u32(&mut self) -> Result<u32, Error> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// Eight bytes, big-endian.
    pub fn u64(&mut self) -> Result<u64, Error> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// Eight bytes, big-endian two's complement.
    pub fn i64(&mut self) -> Result<i64, Error> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    /// A one-byte length and that many bytes.
    pub fn short_bytes(&mut self) -> Result<&'a [u8], Error> {
        let len = self.u8()?;
        self.take(usize::from(len))
    }

    /// A two-byte length and that many bytes.
    pub fn long_bytes(&mut self) -> Result<&'a [u8], Error> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// One byte, 0 (false) or 1 (true); any other value is an error.
    pub fn bool(&mut self) -> Result<bool, Error> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(Error::invalid(format!("{other} is not a boolean (0 or 1)"))),
        }
    }

    /// A one-byte length and that many bytes, which must be UTF-8.
    pub fn short_str(&mut self) -> Result<&'a str, Error> {
        let bytes = self.short_bytes()?;
        utf8(bytes)
    }

    /// A two-byte length and that many bytes, which must be UTF-8.
    pub fn long_str(&mut self) -> Result<&'a str, Error> {
        let bytes = self.long_bytes()?;
        utf8(bytes)
    }

    /// A presence byte (as [`Reader::bool`]), then the value read by `read` when present.
    pub fn option<T>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Result<T, Error>,
    ) -> Result<Option<T>, Error> {
        if self.bool()? {
            read(self).map(Some)
        } else {
            Ok(None)
        }
    }

    /// A two-byte count, then that many items read by `read`. A count above `max` is an error
    /// before any item is read: bound every list by what the payload may hold.
    pub fn list<T>(
        &mut self,
        max: usize,
        mut read: impl FnMut(&mut Self) -> Result<T, Error>,
    ) -> Result<Vec<T>, Error> {
        let count = usize::from(self.u16()?);
        if count > max {
            return Err(Error::invalid(format!(
                "{count} items exceed the limit of {max}"
            )));
        }
        // Never reserve more than the bytes left could hold (an item takes at least none, so
        // this only caps the allocation; the reads still check every length).
        let mut items = Vec::with_capacity(count.min(self.bytes.len()));
        for _ in 0..count {
            items.push(read(self)?);
        }
        Ok(items)
    }

    /// The bytes not read yet, ending the reading: for a payload whose last part is
    /// whatever follows (such as bytes a co-signer appended, `Cosign::Append`).
    pub fn rest(self) -> &'a [u8] {
        self.bytes
    }

    /// Fails unless every byte was read (trailing bytes mean a malformed payload).
    pub fn finish(self) -> Result<(), Error> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(Error::invalid(format!(
                "{} trailing bytes",
                self.bytes.len()
            )))
        }
    }
}

fn utf8(bytes: &[u8]) -> Result<&str, Error> {
    std::str::from_utf8(bytes).map_err(|_| Error::invalid("text is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let bytes = Writer::new()
            .u8(1)
            .u16(2)
            .u32(3)
            .u64(4)
            .i64(-5)
            .short_bytes(b"abc")
            .unwrap()
            .long_bytes(b"defg")
            .unwrap()
            .finish();
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u8().unwrap(), 1);
        assert_eq!(r.u16().unwrap(), 2);
        assert_eq!(r.u32().unwrap(), 3);
        assert_eq!(r.u64().unwrap(), 4);
        assert_eq!(r.i64().unwrap(), -5);
        assert_eq!(r.short_bytes().unwrap(), b"abc");
        assert_eq!(r.long_bytes().unwrap(), b"defg");
        r.finish().unwrap();
        for len in 0..bytes.len() {
            let mut r = Reader::new(&bytes[..len]);
            let all = (|| {
                r.u8()?;
                r.u16()?;
                r.u32()?;
                r.u64()?;
                r.i64()?;
                r.short_bytes()?;
                r.long_bytes()?;
                Ok::<_, Error>(())
            })();
            assert!(all.is_err());
        }
        assert!(Writer::new().short_bytes(&[0u8; 256]).is_err());
        assert!(Reader::new(&[1]).finish().is_err());
    }

    /// A record using every composite helper, as a hand-written conversion would.
    #[derive(Debug, PartialEq)]
    struct Record {
        name: String,
        about: String,
        active: bool,
        score: Option<u32>,
        tags: Vec<String>,
    }

    const MAX_TAGS: usize = 4;

    fn write(record: &Record) -> Result<Vec<u8>, Error> {
        Ok(Writer::new()
            .short_str(&record.name)?
            .long_str(&record.about)?
            .bool(record.active)
            .option(record.score, |w, s| Ok(w.u32(s)))?
            .list(&record.tags, |w, t| w.short_str(t))?
            .finish())
    }

    fn read(bytes: &[u8]) -> Result<Record, Error> {
        let mut r = Reader::new(bytes);
        let record = Record {
            name: r.short_str()?.to_owned(),
            about: r.long_str()?.to_owned(),
            active: r.bool()?,
            score: r.option(|r| r.u32())?,
            tags: r.list(MAX_TAGS, |r| Ok(r.short_str()?.to_owned()))?,
        };
        r.finish()?;
        Ok(record)
    }

    #[test]
    fn strings_booleans_options_and_lists_round_trip() {
        let records = [
            Record {
                name: "héllo".into(),
                about: "x".repeat(300),
                active: true,
                score: Some(7),
                tags: vec!["a".into(), "".into(), "ç".into()],
            },
            Record {
                name: String::new(),
                about: String::new(),
                active: false,
                score: None,
                tags: Vec::new(),
            },
        ];
        for record in records {
            let bytes = write(&record).unwrap();
            assert_eq!(read(&bytes).unwrap(), record);
            // Every truncation and any trailing byte is an error, never a panic.
            for len in 0..bytes.len() {
                assert!(read(&bytes[..len]).is_err(), "truncated to {len}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(read(&longer).is_err());
        }
        // The exact layout of the composite helpers.
        let bytes = Writer::new()
            .bool(true)
            .option(None::<u8>, |w, v| Ok(w.u8(v)))
            .unwrap()
            .option(Some(5u8), |w, v| Ok(w.u8(v)))
            .unwrap()
            .list([true, false], |w, v| Ok(w.bool(v)))
            .unwrap()
            .finish();
        assert_eq!(bytes, [1, 0, 1, 5, 0, 2, 1, 0]);
    }

    #[test]
    fn malformed_composites_are_errors() {
        // A boolean other than 0 or 1 (also as an option's presence byte).
        assert!(Reader::new(&[2]).bool().is_err());
        assert!(Reader::new(&[2, 0]).option(|r| r.u8()).is_err());
        // Invalid UTF-8 in both string widths.
        assert!(Reader::new(&[1, 0xff]).short_str().is_err());
        assert!(Reader::new(&[0, 1, 0xc3]).long_str().is_err());
        // A count above the limit fails before reading items; a huge count with few bytes fails
        // on the bytes (and allocates nothing large).
        assert!(
            Reader::new(&[0, 5, 1, 1, 1, 1, 1])
                .list(4, |r| r.u8())
                .is_err()
        );
        assert!(
            Reader::new(&[0xff, 0xff, 1])
                .list(usize::MAX, |r| r.u8())
                .is_err()
        );
        assert_eq!(
            Reader::new(&[0, 2, 1, 1]).list(2, |r| r.u8()).unwrap(),
            [1, 1]
        );
        // Writers refuse what they cannot prefix.
        assert!(Writer::new().short_str(&"x".repeat(256)).is_err());
        assert!(Writer::new().long_str(&"x".repeat(65_536)).is_err());
        assert!(
            Writer::new()
                .list(vec![0u8; 65_536], |w, v| Ok(w.u8(v)))
                .is_err()
        );
    }
}
