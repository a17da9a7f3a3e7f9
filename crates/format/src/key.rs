//! Keys: (objectid, type, offset), ordered in that order.
use crate::structs::DiskKey;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Key {
    pub objectid: u64,
    pub item_type: u8,
    pub offset: u64,
}

impl Key {
    pub const MIN: Key = Key::new(0, 0, 0);
    pub const MAX: Key = Key::new(u64::MAX, u8::MAX, u64::MAX);

    pub const fn new(objectid: u64, item_type: u8, offset: u64) -> Self {
        Key {
            objectid,
            item_type,
            offset,
        }
    }

    pub fn to_disk(self) -> DiskKey {
        DiskKey {
            objectid: self.objectid.into(),
            type_: self.item_type,
            offset: self.offset.into(),
        }
    }
}

impl From<DiskKey> for Key {
    fn from(d: DiskKey) -> Self {
        Key::new(d.objectid.get(), d.type_, d.offset.get())
    }
}

impl core::fmt::Display for Key {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let obj = match crate::consts::objectid_name(self.objectid) {
            Some(n) if self.objectid < 256 || self.objectid > u64::MAX - 256 => n.to_string(),
            _ => self.objectid.to_string(),
        };
        match crate::consts::key_type_name(self.item_type) {
            Some(t) => write!(f, "({obj} {t} {})", self.offset),
            None => write!(f, "({obj} UNKNOWN.{} {})", self.item_type, self.offset),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn orders_by_objectid_then_type_then_offset() {
        let a = Key::new(5, 1, 100);
        let b = Key::new(5, 12, 0);
        let c = Key::new(6, 0, 0);
        assert!(a < b && b < c);
    }

    proptest! {
        #[test]
        fn disk_round_trip(o in any::<u64>(), t in any::<u8>(), off in any::<u64>()) {
            let k = Key::new(o, t, off);
            prop_assert_eq!(Key::from(k.to_disk()), k);
        }

        #[test]
        fn order_matches_tuple(a in any::<(u64,u8,u64)>(), b in any::<(u64,u8,u64)>()) {
            let ka = Key::new(a.0, a.1, a.2);
            let kb = Key::new(b.0, b.1, b.2);
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
        }
    }
}
