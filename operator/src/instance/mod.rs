//! The InferenceInstance controller.

pub mod builders;
