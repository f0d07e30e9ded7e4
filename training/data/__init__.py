"""The data pipeline: readers, frames, the HDF5 store, statistics, splits, datasets and loaders."""
