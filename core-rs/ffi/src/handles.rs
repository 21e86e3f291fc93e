//! The handle table. Handles are small integers (never pointers): a freed, never-issued or
//! wrong-kind handle is looked up and rejected with a message, never dereferenced.
use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// What a handle points at; part of every error message about a bad handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Tokenizer,
    TokenizerTrainJob,
    Model,
    Trainer,
    Session,
    BatchSession,
}

struct Entry {
    kind: Kind,
    object: Arc<dyn Any + Send + Sync>,
}

struct Table {
    next: u32,
    entries: HashMap<u32, Entry>,
}

fn table() -> &'static Mutex<Table> {
    static TABLE: OnceLock<Mutex<Table>> = OnceLock::new();
    // Start well above 0 so that 0, small ints and uninitialised memory are never valid handles.
    TABLE.get_or_init(|| Mutex::new(Table { next: 0x1000, entries: HashMap::new() }))
}

fn lock() -> std::sync::MutexGuard<'static, Table> {
    // A panic while holding the lock poisons it; the table itself is still consistent.
    table().lock().unwrap_or_else(|p| p.into_inner())
}

pub fn insert<T: Any + Send + Sync>(kind: Kind, object: T) -> u32 {
    let mut t = lock();
    let id = t.next;
    t.next = t.next.wrapping_add(1).max(0x1000);
    t.entries.insert(id, Entry { kind, object: Arc::new(object) });
    id
}

pub fn get<T: Any + Send + Sync>(handle: u32, kind: Kind) -> Result<Arc<T>, String> {
    let t = lock();
    let entry = t
        .entries
        .get(&handle)
        .ok_or_else(|| format!("invalid {kind:?} handle {handle}: it was already freed or never issued"))?;
    if entry.kind != kind {
        return Err(format!("handle {handle} is a {:?}, not a {kind:?}", entry.kind));
    }
    entry
        .object
        .clone()
        .downcast::<T>()
        .map_err(|_| format!("handle {handle}: internal type mismatch for {kind:?}"))
}

pub fn remove(handle: u32, kind: Kind) -> Result<(), String> {
    let mut t = lock();
    match t.entries.get(&handle) {
        None => Err(format!("invalid {kind:?} handle {handle}: it was already freed or never issued")),
        Some(e) if e.kind != kind => Err(format!("handle {handle} is a {:?}, not a {kind:?}", e.kind)),
        Some(_) => {
            t.entries.remove(&handle);
            Ok(())
        }
    }
}

pub fn live_count() -> usize {
    lock().entries.len()
}
