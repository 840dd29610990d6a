//! [`PackedList`]: one agent's short list of actions or events, the usual items (on the
//! agent's own files, see [`crate::agent_file::AgentFile`]) kept as a byte each over the
//! agent's id, the rest whole.
//!
//! A pass holds every agent's planned actions and what it did until its report is out. An
//! agent cleaned the usual way has five actions (archive three logs, delete the prompt,
//! record) and four events; as vectors of whole items they were 440 bytes of heap per
//! agent, 17 MB of a 40,000-agent pass's peak. Packed, they are nine bytes beside the id,
//! inside the list.

use serde::Serialize;
use std::fmt;
use std::sync::Arc;

/// An item a [`PackedList`] can keep as one byte.
pub trait Pack: Clone {
    /// Its code (below [`WHOLE`]) and the agent id the code is over (`None`: the code alone
    /// says it all); `None` when it is kept whole.
    fn pack(&self) -> Option<(u8, Option<&Arc<str>>)>;
    /// The item `code` stands for, over `id` (there whenever the code needs one: the list
    /// keeps a code over an id only with that id).
    fn unpack(code: u8, id: Option<&Arc<str>>) -> Self;
}

/// The code of an item kept whole (the next one of `whole`).
pub const WHOLE: u8 = u8::MAX;

/// Codes kept inside the list; more items are kept whole.
const INLINE: usize = 6;

/// A short list of `T`s in order: the first few as codes (see [`Pack`]), over one agent id,
/// the others whole. Items are read as values (`iter`), made from their codes.
#[derive(Clone)]
pub struct PackedList<T> {
    id: Option<Arc<str>>,
    codes: [u8; INLINE],
    len: u8,
    /// The items coded [`WHOLE`], in order, then those beyond the codes.
    whole: Vec<T>,
}

impl<T> PackedList<T> {
    pub const fn new() -> Self {
        PackedList {
            id: None,
            codes: [0; INLINE],
            len: 0,
            whole: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        usize::from(self.len) + self.beyond()
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0 && self.whole.is_empty()
    }

    /// How many items are kept whole (the others are a byte each).
    #[cfg(test)]
    pub fn kept_whole(&self) -> usize {
        self.whole.len()
    }

    /// The items kept whole after the codes.
    fn beyond(&self) -> usize {
        let coded_whole = self.codes[..usize::from(self.len)]
            .iter()
            .filter(|&&c| c == WHOLE)
            .count();
        self.whole.len() - coded_whole
    }
}

impl<T: Pack> PackedList<T> {
    pub fn push(&mut self, item: T) {
        if usize::from(self.len) < INLINE && self.beyond() == 0 {
            let code = match item.pack() {
                Some((code, None)) => code,
                Some((code, Some(id))) => match &self.id {
                    None => {
                        self.id = Some(id.clone());
                        code
                    }
                    Some(own) if Arc::ptr_eq(own, id) || **own == **id => code,
                    Some(_) => WHOLE,
                },
                None => WHOLE,
            };
            debug_assert!(code == WHOLE || T::unpack(code, self.id.as_ref()).pack().is_some());
            self.codes[usize::from(self.len)] = code;
            self.len += 1;
            if code != WHOLE {
                return;
            }
        }
        self.whole.push(item);
    }

    /// The items, in order.
    pub fn iter(&self) -> Iter<'_, T> {
        Iter {
            list: self,
            at: 0,
            whole: self.whole.iter(),
        }
    }

    pub fn to_vec(&self) -> Vec<T> {
        self.iter().collect()
    }

    /// Puts `item` at `at` (at the end when `at` is past it).
    pub fn insert(&mut self, at: usize, item: T) {
        if at >= self.len() {
            self.push(item);
        } else {
            let mut all = self.to_vec();
            all.insert(at, item);
            *self = all.into_iter().collect();
        }
    }

    /// Keeps the items `keep` says yes to.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        *self = self.iter().filter(|item| keep(item)).collect();
    }

    /// Each item as `change` makes it.
    pub fn map(&self, change: impl FnMut(T) -> T) -> Self {
        self.iter().map(change).collect()
    }

    pub fn contains(&self, item: &T) -> bool
    where
        T: PartialEq,
    {
        self.iter().any(|x| x == *item)
    }
}

impl<T> Default for PackedList<T> {
    fn default() -> Self {
        PackedList::new()
    }
}

/// Reads a [`PackedList`]'s items in order, made from their codes.
pub struct Iter<'a, T> {
    list: &'a PackedList<T>,
    at: usize,
    whole: std::slice::Iter<'a, T>,
}

impl<T> Clone for Iter<'_, T> {
    fn clone(&self) -> Self {
        Iter {
            list: self.list,
            at: self.at,
            whole: self.whole.clone(),
        }
    }
}

impl<T: Pack> Iterator for Iter<'_, T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        if self.at < usize::from(self.list.len) {
            let code = self.list.codes[self.at];
            self.at += 1;
            if code != WHOLE {
                return Some(T::unpack(code, self.list.id.as_ref()));
            }
        }
        self.whole.next().cloned()
    }
}

impl<'a, T: Pack> IntoIterator for &'a PackedList<T> {
    type Item = T;
    type IntoIter = Iter<'a, T>;
    fn into_iter(self) -> Iter<'a, T> {
        self.iter()
    }
}

impl<T: Pack> FromIterator<T> for PackedList<T> {
    fn from_iter<I: IntoIterator<Item = T>>(items: I) -> Self {
        let mut list = PackedList::new();
        list.extend(items);
        list
    }
}

impl<T: Pack> Extend<T> for PackedList<T> {
    fn extend<I: IntoIterator<Item = T>>(&mut self, items: I) {
        for item in items {
            self.push(item);
        }
    }
}

impl<T: Pack> From<Vec<T>> for PackedList<T> {
    fn from(items: Vec<T>) -> Self {
        items.into_iter().collect()
    }
}

impl<T: Pack + PartialEq> PartialEq for PackedList<T> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl<T: Pack + Eq> Eq for PackedList<T> {}

impl<T: Pack + PartialEq> PartialEq<Vec<T>> for PackedList<T> {
    fn eq(&self, other: &Vec<T>) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter().cloned())
    }
}

impl<T: Pack + PartialEq, const N: usize> PartialEq<[T; N]> for PackedList<T> {
    fn eq(&self, other: &[T; N]) -> bool {
        self.len() == N && self.iter().eq(other.iter().cloned())
    }
}

impl<T: Pack + fmt::Debug> fmt::Debug for PackedList<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<T: Pack + Serialize> Serialize for PackedList<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test item: `Own(n)` on agent `id` packs (as `n`), `Plain(n)` packs without an id,
    /// `Big` never does.
    #[derive(Clone, Debug, PartialEq)]
    enum Item {
        Own(Arc<str>, u8),
        Plain(u8),
        Big(String),
    }

    impl Pack for Item {
        fn pack(&self) -> Option<(u8, Option<&Arc<str>>)> {
            match self {
                Item::Own(id, n) => Some((*n, Some(id))),
                Item::Plain(n) => Some((100 + n, None)),
                Item::Big(_) => None,
            }
        }
        fn unpack(code: u8, id: Option<&Arc<str>>) -> Item {
            if code >= 100 {
                Item::Plain(code - 100)
            } else {
                Item::Own(id.expect("an id for an own item").clone(), code)
            }
        }
    }

    fn own(id: &Arc<str>, n: u8) -> Item {
        Item::Own(id.clone(), n)
    }

    #[test]
    fn items_read_back_in_order_whatever_is_packed_and_whatever_is_whole() {
        let a: Arc<str> = Arc::from("agent-a");
        let b: Arc<str> = Arc::from("agent-b");
        let items = vec![
            own(&a, 1),
            Item::Big("x".into()),
            Item::Plain(3),
            // Another agent's item cannot be coded over this list's id: kept whole.
            own(&b, 2),
            own(&a, 4),
            Item::Big("y".into()),
            // Past the codes kept inside: whole, after the rest.
            own(&a, 5),
            Item::Plain(6),
        ];
        let mut list = PackedList::new();
        for (n, item) in items.iter().enumerate() {
            list.push(item.clone());
            assert_eq!(list.len(), n + 1);
            assert_eq!(list.to_vec(), items[..=n]);
        }
        assert_eq!(list, items);
        assert_eq!(list.iter().count(), items.len());
        let text = format!("{list:?}");
        assert_eq!(text, format!("{items:?}"));
    }

    #[test]
    fn usual_items_take_no_heap_and_read_the_ids_own_text() {
        let a: Arc<str> = Arc::from("agent-a");
        let list: PackedList<Item> = (0..INLINE as u8).map(|n| own(&a, n)).collect();
        assert_eq!(list.whole.capacity(), 0, "nothing kept whole");
        match list.iter().next() {
            Some(Item::Own(id, 0)) => assert!(Arc::ptr_eq(&id, &a), "the id's own text"),
            other => panic!("{other:?}"),
        }
        assert!(std::mem::size_of::<PackedList<Item>>() <= 48);
    }

    #[test]
    fn insert_retain_and_map_keep_the_order() {
        let a: Arc<str> = Arc::from("a");
        let mut list: PackedList<Item> = vec![own(&a, 1), Item::Big("b".into()), own(&a, 3)].into();
        list.insert(1, Item::Plain(2));
        list.insert(99, Item::Plain(4));
        assert_eq!(
            list,
            vec![
                own(&a, 1),
                Item::Plain(2),
                Item::Big("b".into()),
                own(&a, 3),
                Item::Plain(4)
            ]
        );
        list.retain(|i| !matches!(i, Item::Plain(_)));
        assert_eq!(list, vec![own(&a, 1), Item::Big("b".into()), own(&a, 3)]);
        let doubled = list.map(|i| match i {
            Item::Own(id, n) => Item::Own(id, n * 2),
            other => other,
        });
        assert_eq!(doubled, vec![own(&a, 2), Item::Big("b".into()), own(&a, 6)]);
        assert!(doubled.contains(&own(&a, 6)) && !doubled.contains(&own(&a, 3)));
        assert!(PackedList::<Item>::new().is_empty());
    }
}
