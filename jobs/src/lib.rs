//! What the API and the workers share: the catalogue, the instance model, storage, the job
//! queue, the Kubernetes objects of an instance and the reading of its state.

pub mod catalogue;
pub mod model;
pub mod objects;
pub mod prometheus;
pub mod queue;
pub mod settings;
pub mod state;
pub mod store;
