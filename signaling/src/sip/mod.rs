//! SIP messages: parsing around rsip's gaps, validation and response building.
