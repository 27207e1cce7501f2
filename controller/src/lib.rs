//! Lifeboat controller (skeleton).
