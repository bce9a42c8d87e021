//! `/api/flavours`, `/api/images` and `/api/security_groups`, served from the catalogue.

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;

use crate::app::AppState;
use crate::error::ApiError;

/// A flavour in VISA's shape: `ram` in MiB, `disk` in GiB.
#[derive(Serialize)]
pub struct FlavourView {
    id: String,
    name: String,
    cpus: i64,
    ram: i64,
    disk: i64,
}

/// An image in VISA's shape: `size` in bytes, or null when unknown.
#[derive(Serialize)]
pub struct ImageView {
    id: String,
    name: String,
    size: Option<i64>,
}

fn flavour_view(flavour: &visa_jobs::catalogue::Flavour) -> FlavourView {
    FlavourView {
        id: flavour.id.clone(),
        name: flavour.name.clone(),
        cpus: flavour.cpus,
        ram: flavour.ram,
        disk: flavour.disk,
    }
}

fn image_view(image: &visa_jobs::catalogue::Image) -> ImageView {
    ImageView {
        id: image.id.clone(),
        name: image.name.clone(),
        size: image.size,
    }
}

pub async fn flavours(State(state): State<AppState>) -> Json<Vec<FlavourView>> {
    Json(state.catalogue.flavours.iter().map(flavour_view).collect())
}

pub async fn flavour(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<FlavourView>, ApiError> {
    state
        .catalogue
        .flavour(&id)
        .map(|flavour| Json(flavour_view(flavour)))
        .ok_or_else(|| ApiError::NotFound(format!("flavour {id:?} not found")))
}

pub async fn images(State(state): State<AppState>) -> Json<Vec<ImageView>> {
    Json(state.catalogue.images.iter().map(image_view).collect())
}

pub async fn image(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ImageView>, ApiError> {
    state
        .catalogue
        .image(&id)
        .map(|image| Json(image_view(image)))
        .ok_or_else(|| ApiError::NotFound(format!("image {id:?} not found")))
}

pub async fn security_groups(State(state): State<AppState>) -> Json<Vec<String>> {
    Json(
        state
            .catalogue
            .security_groups
            .iter()
            .map(|group| group.name.clone())
            .collect(),
    )
}
