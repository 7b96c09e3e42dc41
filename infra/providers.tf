provider "google" {
  project = var.project_id
  region  = var.region
}

# The project number is part of every function's deterministic URL (see locals.tf).
data "google_project" "this" {
  project_id = var.project_id
}
