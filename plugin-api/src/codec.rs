//! Small helpers for binary conversions: big-endian integers and length-prefixed bytes, read
//! with checks that return errors instead of panicking on short or malformed input.

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
}
