//! The Dazaar card: the JSON that advertises a dataset and its payment terms. (Market issue.)
