terraform {
  required_version = ">= 1.6"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 6.0"
    }
    archive = {
      source  = "hashicorp/archive"
      version = "~> 2.4"
    }
  }

  # Partial configuration: give the bucket (and optionally a prefix) at init time, e.g.
  #   terraform init -backend-config="bucket=my-tf-state" -backend-config="prefix=backfill"
  backend "gcs" {}
}
