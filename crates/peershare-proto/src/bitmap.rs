//! A fixed-size set of chunk indices: which chunks a download has verified
//! (the resume state) or which chunks a peer holds (`Have` messages).
//!
//! Bit `i` is bit `i % 8` (least significant first) of byte `i / 8`. The
//! encoding is canonical: bits past `len` are zero, which
//! [`Bitmap::from_bytes`] checks, so one set has exactly one encoding.

/// A set of chunk indices below `len`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitmap {
    len: u32,
    ones: u32,
    bytes: Vec<u8>,
}

impl Bitmap {
    /// The empty set of indices below `len`.
    pub fn new(len: u32) -> Self {
        Self {
            len,
            ones: 0,
            bytes: vec![0; Self::byte_len(len)],
        }
    }

    /// The full set of indices below `len`.
    pub fn full(len: u32) -> Self {
        let mut b = Self::new(len);
        for i in 0..len {
            b.set(i);
        }
        b
    }

    /// Bytes the encoding of a `len`-bit map takes.
    pub fn byte_len(len: u32) -> usize {
        (len as usize).div_ceil(8)
    }

    /// The set encoded by `bytes`; `None` unless `bytes` is exactly
    /// [`Bitmap::byte_len`] long with every bit past `len` clear.
    pub fn from_bytes(len: u32, bytes: &[u8]) -> Option<Self> {
        if bytes.len() != Self::byte_len(len) {
            return None;
        }
        let spare = (bytes.len() as u64 * 8 - len as u64) as u32;
        if spare > 0 {
            let last = *bytes.last().expect("spare bits imply a byte");
            if last >> (8 - spare) != 0 {
                return None;
            }
        }
        Some(Self {
            len,
            ones: bytes.iter().map(|b| b.count_ones()).sum(),
            bytes: bytes.to_vec(),
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, i: u32) -> bool {
        i < self.len && self.bytes[(i / 8) as usize] & (1 << (i % 8)) != 0
    }

    /// Adds `i`; returns true if it was not in the set. Indices at or past
    /// `len` are ignored.
    pub fn set(&mut self, i: u32) -> bool {
        if self.get(i) || i >= self.len {
            return false;
        }
        self.bytes[(i / 8) as usize] |= 1 << (i % 8);
        self.ones += 1;
        true
    }

    /// Number of indices in the set.
    pub fn count(&self) -> u32 {
        self.ones
    }

    /// Every index below `len` is in the set.
    pub fn is_full(&self) -> bool {
        self.ones == self.len
    }

    /// The indices in the set, in order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(|&i| self.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_count_and_full() {
        let mut b = Bitmap::new(10);
        assert!(!b.is_full());
        assert!(b.set(0));
        assert!(b.set(9));
        assert!(!b.set(9), "already set");
        assert!(!b.set(10), "out of range is ignored");
        assert_eq!(b.count(), 2);
        assert_eq!(b.iter().collect::<Vec<_>>(), vec![0, 9]);
        assert_eq!(b.as_bytes(), &[0b0000_0001, 0b0000_0010]);
        assert!(Bitmap::full(10).is_full());
        assert_eq!(Bitmap::full(10).as_bytes(), &[0xff, 0b11]);
        assert!(Bitmap::new(0).is_full(), "the empty file has every chunk");
    }

    #[test]
    fn from_bytes_is_canonical() {
        assert_eq!(
            Bitmap::from_bytes(10, &[0xff, 0b11]),
            Some(Bitmap::full(10))
        );
        assert_eq!(Bitmap::from_bytes(10, &[0xff, 0b111]), None, "bit 10 set");
        assert_eq!(Bitmap::from_bytes(10, &[0xff]), None, "too short");
        assert_eq!(Bitmap::from_bytes(10, &[0xff, 0, 0]), None, "too long");
        assert_eq!(Bitmap::from_bytes(16, &[0xff, 0x80]).unwrap().count(), 9);
        assert_eq!(Bitmap::from_bytes(0, &[]), Some(Bitmap::new(0)));
    }
}
