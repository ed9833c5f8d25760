//! `dead-letters ... --nats`: the cluster's dead letters, from any machine that reaches
//! NATS. A replay moves the letter from the `dead` bucket to `replay`; the replica posting
//! for its destination takes it from there within a second.

use std::time::Duration;

use async_nats::jetstream::{self, kv};

use super::names::{hex, Names};
use super::NatsSettings;
use crate::commands::dead_letters::Letters;
use crate::queue::DeadLetter;

/// The buckets, opened (not created: with no gateway ever started there is nothing to show).
pub struct NatsLetters {
    runtime: tokio::runtime::Runtime,
    dead: Option<kv::Store>,
    replay: Option<kv::Store>,
    place: String,
}

impl NatsLetters {
    pub fn open(settings: &NatsSettings) -> Result<NatsLetters, String> {
        let names = Names::new(&settings.prefix)?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        let (dead, replay) = runtime.block_on(async {
            let client = super::connect_once(settings).await.map_err(|e| e.to_string())?;
            let mut js = jetstream::new(client);
            js.set_timeout(Duration::from_secs(5));
            let dead = js.get_key_value(names.bucket("dead")).await.ok();
            let replay = js.get_key_value(names.bucket("replay")).await.ok();
            Ok::<_, String>((dead, replay))
        })?;
        let place = format!("NATS {} (bucket {})", super::shown(&settings.urls), names.bucket("dead"));
        Ok(NatsLetters { runtime, dead, replay, place })
    }

    fn get(&self, id: &str) -> Result<Option<(DeadLetter, bytes::Bytes)>, String> {
        let Some(dead) = &self.dead else { return Ok(None) };
        let value = self.runtime.block_on(dead.get(hex(id.as_bytes()))).map_err(|e| e.to_string())?;
        match value {
            None => Ok(None),
            Some(v) => Ok(Some((serde_json::from_slice(&v).map_err(|e| format!("{id}: unreadable: {e}"))?, v))),
        }
    }
}

impl Letters for NatsLetters {
    fn place(&self) -> String {
        self.place.clone()
    }

    fn list(&self) -> Vec<Result<DeadLetter, String>> {
        let Some(dead) = &self.dead else { return Vec::new() };
        match self.runtime.block_on(super::queue::read_all(dead)) {
            Ok(letters) => letters.into_iter().map(Ok).collect(),
            Err(e) => vec![Err(e.to_string())],
        }
    }

    fn show(&self, id: &str) -> Result<DeadLetter, String> {
        self.get(id)?.map(|(l, _)| l).ok_or_else(|| format!("{id}: no such dead letter"))
    }

    fn replay(&self, id: &str) -> Result<bool, String> {
        let (Some((_, value)), Some(dead), Some(replay)) = (self.get(id)?, &self.dead, &self.replay) else {
            return Ok(false);
        };
        let key = hex(id.as_bytes());
        // Request first, then remove: a failure between leaves the letter listed and
        // requested (replayed once, still listed), never lost.
        self.runtime.block_on(replay.put(&key, value)).map_err(|e| e.to_string())?;
        self.runtime.block_on(dead.purge(&key)).map_err(|e| e.to_string())?;
        Ok(true)
    }

    fn purge(&self, id: &str) -> Result<bool, String> {
        let (Some(_), Some(dead)) = (self.get(id)?, &self.dead) else { return Ok(false) };
        self.runtime.block_on(dead.purge(hex(id.as_bytes()))).map_err(|e| e.to_string())?;
        Ok(true)
    }
}
