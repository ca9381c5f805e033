//! Seller and buyer: rekeyed feeds, revalidation, revocation. (Market issue.)
