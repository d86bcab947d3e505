//! Write a [tierkeep](https://example.invalid/tierkeep) backup policy in Rust.
//!
//! A policy decides three things: the **interval** until the next scheduled backup, which
//! black-box backups **age** into the deletion zone, and the order in which deletion-zone
//! backups are **evicted** when it is full. Implement [`Policy`] (every method has the
//! built-in rules as its default, so override only what you change), export it with
//! [`export_policy!`], test it natively with `cargo test` (see [`testing`] and [`sim`]),
//! then build it for `wasm32-unknown-unknown` and wrap it as a component (the guide in
//! `sdk/README.md` shows the commands).
//!
//! ```
//! use tierkeep_sdk::{Backup, Context, Policy, Metadata, time};
//!
//! /// Back up every 15 minutes, whatever the configuration says.
//! struct Quarterly;
//!
//! impl Policy for Quarterly {
//!     type Settings = ();
//!     fn metadata() -> Metadata {
//!         tierkeep_sdk::metadata("quarterly", "0.1.0", "a backup every 15 minutes", vec![])
//!     }
//!     fn interval(_ctx: &Context, _settings: &()) -> u64 {
//!         15 * time::MINUTE
//!     }
//! }
//! tierkeep_sdk::export_policy!(Quarterly);
//!
//! let ctx = tierkeep_sdk::testing::context(0);
//! assert_eq!(tierkeep_sdk::testing::interval::<Quarterly>(&ctx), 15 * 60_000);
//! ```

pub mod arena;
#[cfg(not(target_arch = "wasm32"))]
pub mod sim;
pub mod testing;
pub mod time;

#[doc(hidden)]
pub mod wit {
    //! The bindings generated from `sdk/wit` (the one copy of the contract).
    wit_bindgen::generate!({
        path: "wit",
        world: "policy-module-packed",
        pub_export_macro: true,
        export_macro_name: "__export_policy_module",
        default_bindings_module: "tierkeep_sdk::wit",
    });
}

use serde::de::DeserializeOwned;

pub use arena::DecisionAllocator;

pub use wit::tierkeep::policy::log::Level;
pub use wit::tierkeep::policy::types::{
    Attempt, Backup, BackupKind, Context, Metadata, Room, Schedule, Setting, Zone, ZoneState,
};

/// A policy. Every decision has the built-in rules as its default.
pub trait Policy {
    /// The policy's settings (`[policy] settings` in tierkeep's configuration), read
    /// from JSON with serde. Use `#[serde(default)]` so that missing keys take defaults;
    /// `()` for none.
    type Settings: DeserializeOwned + Default;

    /// Name, version, description and settings; see [`metadata`] and [`setting`].
    fn metadata() -> Metadata;

    /// Checks settings beyond what serde checks.
    fn validate(_settings: &Self::Settings) -> Result<(), String> {
        Ok(())
    }

    /// Milliseconds until the next scheduled backup. Default: T1.
    fn interval(ctx: &Context, _settings: &Self::Settings) -> u64 {
        ctx.schedule.interval
    }

    /// Ids of black-box backups to move to the deletion zone now. Default: every backup
    /// that has been there for T2 or longer, oldest first.
    fn aging(ctx: &Context, _settings: &Self::Settings, black_box: &[Backup]) -> Vec<String> {
        default_aging(ctx, black_box)
    }

    /// Deletion-zone backups in eviction order; the host evicts from the front until
    /// `room` fits (a longer list is fine: the rest is not evicted). Default: the earliest
    /// first, as many as make room ([`enough_to_make_room`]).
    fn eviction(
        ctx: &Context,
        _settings: &Self::Settings,
        deletion: &[Backup],
        room: Room,
    ) -> Vec<String> {
        enough_to_make_room(ctx, deletion, oldest_first(deletion), room)
    }
}

/// The front of `order` that the host would evict to make `room` in the deletion zone
/// holding `deletion` (its capacity from `ctx`): returning only that much keeps a
/// decision over a large zone cheap. All of `order` if even that does not make room.
pub fn enough_to_make_room(
    ctx: &Context,
    deletion: &[Backup],
    order: Vec<&Backup>,
    room: Room,
) -> Vec<String> {
    let Some(cap) = zone(ctx, Zone::Deletion) else {
        return order.into_iter().map(|b| b.id.clone()).collect();
    };
    let mut count = deletion.len() as u64;
    let mut bytes: u64 = deletion.iter().map(|b| b.size_bytes).sum();
    let fits = |count: u64, bytes: u64| {
        count + room.backups <= cap.max_backups
            && cap
                .max_bytes
                .is_none_or(|max| bytes.saturating_add(room.bytes) <= max)
    };
    let mut out = Vec::new();
    for b in order {
        if fits(count, bytes) {
            break;
        }
        count = count.saturating_sub(1);
        bytes = bytes.saturating_sub(b.size_bytes);
        out.push(b.id.clone());
    }
    out
}

/// The built-in aging rule: backups in the black box for T2 or longer, oldest first.
pub fn default_aging(ctx: &Context, black_box: &[Backup]) -> Vec<String> {
    oldest_first(black_box)
        .into_iter()
        .filter(|b| age(ctx, b) >= ctx.schedule.aging)
        .map(|b| b.id.clone())
        .collect()
}

/// How long ago a backup was made (0 if its time is in the future).
pub fn age(ctx: &Context, backup: &Backup) -> u64 {
    u64::try_from(ctx.now.saturating_sub(backup.created_at)).unwrap_or(0)
}

/// Backups sorted oldest first (by creation time, then id).
pub fn oldest_first(backups: &[Backup]) -> Vec<&Backup> {
    let mut v: Vec<&Backup> = backups.iter().collect();
    v.sort_by(|a, b| {
        a.created_at
            .cmp(&b.created_at)
            .then_with(|| a.id.cmp(&b.id))
    });
    v
}

/// The state of `zone` in the context.
pub fn zone(ctx: &Context, zone: Zone) -> Option<&ZoneState> {
    ctx.zones.iter().find(|z| z.zone == zone)
}

/// Builds [`Metadata`].
pub fn metadata(name: &str, version: &str, description: &str, settings: Vec<Setting>) -> Metadata {
    Metadata {
        name: name.into(),
        version: version.into(),
        description: description.into(),
        settings,
    }
}

/// Describes one setting: its name, a type hint (`integer`, `duration`, ...), its default
/// as JSON, and what it does.
pub fn setting(name: &str, kind: &str, default: &str, description: &str) -> Setting {
    Setting {
        name: name.into(),
        kind: kind.into(),
        default: default.into(),
        description: description.into(),
    }
}

/// Logs through the host (natively, to stderr).
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    wit::tierkeep::policy::log::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[policy {level:?}] {message}");
}

/// Parses settings JSON (an empty string, `null` or `{}` means none: the defaults).
pub fn parse_settings<S: DeserializeOwned + Default>(json: &str) -> Result<S, String> {
    let json = json.trim();
    if json.is_empty() {
        return Ok(S::default());
    }
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("invalid settings JSON: {e}"))?;
    match &value {
        serde_json::Value::Null => Ok(S::default()),
        serde_json::Value::Object(m) if m.is_empty() => Ok(S::default()),
        _ => serde_json::from_value(value).map_err(|e| format!("invalid settings: {e}")),
    }
}

#[doc(hidden)]
pub mod __private {
    //! What [`crate::export_policy!`] and the native test helpers call: the same code
    //! path natively and in wasm.
    use super::{Backup, BackupKind, Context, Policy, Room, parse_settings};
    use crate::wit::exports::tierkeep::policy::policy_packed::PackedBackups;

    fn settings<P: Policy>(ctx: &Context) -> P::Settings {
        match parse_settings::<P::Settings>(&ctx.settings) {
            Ok(s) => s,
            // The host validated the settings before using the policy; if they are
            // unreadable now, trap: the host falls back to its built-in rules.
            Err(e) => panic!("{e}"),
        }
    }

    pub fn validate<P: Policy>(json: &str) -> Result<(), String> {
        P::validate(&parse_settings::<P::Settings>(json)?)
    }

    pub fn interval<P: Policy>(ctx: &Context) -> u64 {
        P::interval(ctx, &settings::<P>(ctx))
    }

    pub fn aging<P: Policy>(ctx: &Context, black_box: &[Backup]) -> Vec<String> {
        P::aging(ctx, &settings::<P>(ctx), black_box)
    }

    pub fn eviction<P: Policy>(ctx: &Context, deletion: &[Backup], room: Room) -> Vec<String> {
        P::eviction(ctx, &settings::<P>(ctx), deletion, room)
    }

    /// The backups of a packed list (`policy-packed`). A list whose columns do not add
    /// up is the host's bug: trap, and the host decides with its built-in rules.
    pub fn unpack(list: &PackedBackups) -> Vec<Backup> {
        let n = list.id_lens.len();
        assert!(
            list.kinds.len() == n && list.created_at.len() == n && list.size_bytes.len() == n,
            "a packed backup list whose columns differ in length"
        );
        let mut rest = list.ids.as_str();
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let len = list.id_lens[i] as usize;
            let (Some(id), Some(tail)) = (rest.get(..len), rest.get(len..)) else {
                panic!("a packed backup list whose ids do not add up");
            };
            rest = tail;
            out.push(Backup {
                id: id.to_owned(),
                kind: match list.kinds[i] {
                    0 => BackupKind::Scheduled,
                    1 => BackupKind::Manual,
                    k => panic!("a packed backup of unknown kind {k}"),
                },
                created_at: list.created_at[i],
                size_bytes: list.size_bytes[i],
            });
        }
        assert!(rest.is_empty(), "a packed backup list with ids left over");
        out
    }
}

/// Exports a [`Policy`] as the module's implementation of the contract. Natively this
/// expands to nothing, so the same crate builds and tests on the host.
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct TierkeepExport;
            impl $crate::wit::exports::tierkeep::policy::policy::Guest for TierkeepExport {
                fn describe() -> $crate::Metadata {
                    <$policy as $crate::Policy>::metadata()
                }
                fn validate_settings(settings: String) -> Result<(), String> {
                    $crate::__private::validate::<$policy>(&settings)
                }
                fn interval(ctx: $crate::Context) -> u64 {
                    $crate::__private::interval::<$policy>(&ctx)
                }
                fn aging(ctx: $crate::Context, black_box: Vec<$crate::Backup>) -> Vec<String> {
                    $crate::__private::aging::<$policy>(&ctx, &black_box)
                }
                fn eviction(
                    ctx: $crate::Context,
                    deletion: Vec<$crate::Backup>,
                    room: $crate::Room,
                ) -> Vec<String> {
                    $crate::__private::eviction::<$policy>(&ctx, &deletion, room)
                }
            }
            impl $crate::wit::exports::tierkeep::policy::policy_packed::Guest for TierkeepExport {
                fn aging(
                    ctx: $crate::Context,
                    black_box: $crate::wit::exports::tierkeep::policy::policy_packed::PackedBackups,
                ) -> Vec<String> {
                    let black_box = $crate::__private::unpack(&black_box);
                    $crate::__private::aging::<$policy>(&ctx, &black_box)
                }
                fn eviction(
                    ctx: $crate::Context,
                    deletion: $crate::wit::exports::tierkeep::policy::policy_packed::PackedBackups,
                    room: $crate::Room,
                ) -> Vec<String> {
                    let deletion = $crate::__private::unpack(&deletion);
                    $crate::__private::eviction::<$policy>(&ctx, &deletion, room)
                }
            }
    $crate::wit::__export_policy_module!(TierkeepExport with_types_in $crate::wit);
        };
    };
}

#[cfg(test)]
mod tests {
    use super::__private::unpack;
    use super::{Backup, BackupKind};
    use crate::wit::exports::tierkeep::policy::policy_packed::PackedBackups;

    fn packed(ids: &[&str], kinds: Vec<u8>) -> PackedBackups {
        PackedBackups {
            ids: ids.concat(),
            id_lens: ids.iter().map(|i| i.len() as u32).collect(),
            created_at: (0..ids.len() as i64).collect(),
            size_bytes: (0..ids.len() as u64).map(|i| i * 10).collect(),
            kinds,
        }
    }

    #[test]
    fn a_packed_list_unpacks_into_the_backups_it_holds() {
        let got = unpack(&packed(&["a", "bcd", ""], vec![0, 1, 0]));
        let want = vec![
            Backup {
                id: "a".into(),
                kind: BackupKind::Scheduled,
                created_at: 0,
                size_bytes: 0,
            },
            Backup {
                id: "bcd".into(),
                kind: BackupKind::Manual,
                created_at: 1,
                size_bytes: 10,
            },
            Backup {
                id: String::new(),
                kind: BackupKind::Scheduled,
                created_at: 2,
                size_bytes: 20,
            },
        ];
        let fields = |l: &[Backup]| {
            l.iter()
                .map(|b| (b.id.clone(), b.kind, b.created_at, b.size_bytes))
                .collect::<Vec<_>>()
        };
        assert_eq!(fields(&got), fields(&want));
        assert!(unpack(&packed(&[], vec![])).is_empty());
    }

    #[test]
    #[should_panic(expected = "columns differ")]
    fn columns_of_different_lengths_are_refused() {
        unpack(&packed(&["a", "b"], vec![0]));
    }

    #[test]
    #[should_panic(expected = "do not add up")]
    fn ids_shorter_than_their_lengths_are_refused() {
        let mut p = packed(&["a", "b"], vec![0, 0]);
        p.id_lens[1] = 5;
        unpack(&p);
    }

    #[test]
    #[should_panic(expected = "left over")]
    fn ids_longer_than_their_lengths_are_refused() {
        let mut p = packed(&["a", "b"], vec![0, 0]);
        p.ids.push('x');
        unpack(&p);
    }

    #[test]
    #[should_panic(expected = "unknown kind")]
    fn an_unknown_kind_is_refused() {
        unpack(&packed(&["a"], vec![7]));
    }
}
