//! Galaxy coordinates: a point in a cube of the universe.

use rand::Rng;
use serde::{Deserialize, Serialize};

/// Half the edge of the universe cube, in the game's units.
pub const EXTENT: i32 = 1000;

/// Where a galaxy is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coords {
    /// Left to right.
    pub x: i32,
    /// Bottom to top.
    pub y: i32,
    /// Depth.
    pub z: i32,
}

impl Coords {
    /// A uniformly random point in the universe cube.
    pub fn random(rng: &mut impl Rng) -> Self {
        Self {
            x: rng.gen_range(-EXTENT..=EXTENT),
            y: rng.gen_range(-EXTENT..=EXTENT),
            z: rng.gen_range(-EXTENT / 10..=EXTENT / 10),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_points_stay_inside_the_universe() {
        let mut rng = rand::thread_rng();
        for _ in 0..10_000 {
            let c = Coords::random(&mut rng);
            assert!(c.x.abs() <= EXTENT && c.y.abs() <= EXTENT && c.z.abs() <= EXTENT / 10);
        }
    }
}
