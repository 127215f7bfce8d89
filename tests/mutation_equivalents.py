"""Surviving mutants that cannot change behaviour, by mutant name, with the reason
(tests/mutation_report.py prints it next to the mutant's diff in MUTATION.md).

Why a list by name: an equivalent mutant is a claim about the code, so it is reviewed like
code. Mutant numbers follow the source: when a function changes, its old entries stop matching
a survivor and MUTATION.md lists them as stale, to be checked again.
"""

_DEFAULT = "the argument removed or changed is the function's own default"
_LE_ZERO = ("x − logsumexp(x) is already <= 0 in floating point (logsumexp adds "
            "log Σ e^(x − max) >= log 1 = 0 to the max), so the clamp's bound is never reached")
_UPPER = "1 − mass <= 1 because a mass of exponentials is >= 0; the upper clamp is idle"
_FLOOR = "int(a / b) equals a // b for the non-negative integer indices used here"
_FLOAT64 = "astype(None) is float64 too"
_BIG_ENDIAN = _DEFAULT + " (int.from_bytes is big-endian by default since Python 3.11, our minimum)"
_UNREACHABLE_SIZES = ("unreachable: checks.row_lengths, just before, refused every row whose "
                      "columns do not hold exactly seq_len values (x k, or the sum of the row's "
                      "label_counts), so these sizes always agree")
_SCHEMA = ("the column keeps its stored type instead of being converted; the shard's schema was "
           "checked when it was opened (ids uint16/int32, counts uint8/uint16, tail float32), "
           "and every use below compares, converts (ragged.entry_positions, the int64 cumsum of "
           "sortedids.ids_from_deltas, _duplicates' key with an int64 position) or sums it to "
           "the same result")
_CPU = ("on the CPU, where every test runs, the device argument changes nothing; on CUDA the "
        "mutant fails loudly (tensors on two devices), never silently")
_READ_TOML = ("an argument that only words read_toml's ConfigError, which match_loss catches "
              "(a student not read from a file keeps its kind)")
_RESHAPE = "numpy's reshape takes any negative size as the one unknown dimension (-2 is -1)"
_LOCAL_GUARD = ("the guard turns failures of object storage into one line naming the shard; on "
                "a local folder, where every mutation test runs, it does nothing")
_BUFFER = ("rows are cut after every document, so each document in the buffer starts before "
           "the first row still to cut ends")
_PADDING = ("only padding entries change, and sortedids.rank_order replaces them through the "
            "mask before anything reads them")

FORWARD = {
    "x_topk_from_logits__mutmut_19": _DEFAULT + " (dim=-1)",
    "x_topk_from_logits__mutmut_20": _DEFAULT + " (sorted=True)",
    "x_topk_from_logits__mutmut_33": _UPPER,
    "x_topk_from_logits__mutmut_35": _UPPER,
    "x_topk_from_logits__mutmut_39": _UPPER,
    "x_topk_from_logits__mutmut_41": _LE_ZERO,
    "x_check_finite__mutmut_5":
        "the finiteness mask is [rows, seq]: .all over dim +1 is .all over dim -1",
}

MODES = {
    "x_topp_from_logits__mutmut_19": _DEFAULT + " (dim=-1)",
    "x_topp_from_logits__mutmut_20": _DEFAULT + " (sorted=True)",
    "x_topp_from_logits__mutmut_27": _LE_ZERO,
    "x_topp_from_logits__mutmut_61": _UPPER,
    "x_topp_from_logits__mutmut_63": _UPPER,
    "x_topp_from_logits__mutmut_67": _UPPER,
    "x_topp_from_logits__mutmut_70": _CPU,
    "x_topp_from_logits__mutmut_72": _CPU + " (torch.arange's default device)",
    "x_check_loss__mutmut_3":
        "every mode of the format is a key of LOSSES_FOR_MODE and the manifest's mode is "
        "checked against them when it is read, so the default is never used",
    "x_check_loss__mutmut_5": "as mutant 3",
    "x_row_seed__mutmut_7": _BIG_ENDIAN,
    "x__unique_counts__mutmut_7":
        "`new` holds 0/1 integers instead of booleans; it is only assigned comparisons, "
        "cumsummed (as .long()) and summed, with the same results",
    "x__unique_counts__mutmut_9": "as mutant 7",
    "x_match_loss__mutmut_12": _READ_TOML,
    "x_match_loss__mutmut_13": _READ_TOML,
    "x_match_loss__mutmut_17": _READ_TOML,
    "x_match_loss__mutmut_18": _READ_TOML,
    "x_match_loss__mutmut_19": _READ_TOML,
    "x_match_loss__mutmut_30":
        "a student whose kind is already 'sampled' is replaced by a copy with kind 'sampled': "
        "the same student",
    "x_match_loss__mutmut_31": "as mutant 30",
    "x_sample_from_logits__mutmut_30":
        "adding log_norm instead of subtracting it multiplies the proposal's CDF by a constant "
        "(e^(2 log_norm)), and the targets u · cdf[-1] scale with it: the same draws",
    "x_sample_from_logits__mutmut_40":
        "cdf[-1] = Σ q is 1 up to rounding (within ~1e-7: float32 log-probabilities), so "
        "u / cdf[-1] and u · cdf[-1] differ by less than a uniform would need to cross a CDF "
        "step in any test",
    "x_sample_from_logits__mutmut_41": _CPU + " (uniforms.to(None) keeps them where they are)",
    "x_sample_from_logits__mutmut_59": _CPU,
    "x_sample_from_logits__mutmut_61": _CPU,
    "x_sample_from_logits__mutmut_78": _LE_ZERO,
    "x_sample_from_logits__mutmut_85": _DEFAULT + " (dim=-1)",
    "x_sample_from_logits__mutmut_118": _UPPER,
    "x_sample_from_logits__mutmut_120": _UPPER,
    "x_sample_from_logits__mutmut_128": _UPPER,
}

LOSSES = {
    "x_has_target__mutmut_3": "the loss mask is boolean already, and ones_like keeps its dtype",
    "x_has_target__mutmut_5": "as mutant 3",
    "x_loss_from_gathered__mutmut_12":
        "when s_target already has a column per position, padding it by 0 columns is a no-op",
    "x__log1mexp__mutmut_7":
        "at x = −ln 2 itself both formulas give log(1/2) to float32 rounding",
    "x__log1mexp__mutmut_9":
        "on [−1.69, −0.69] both formulas are accurate to about one float32 ulp (over 200,001 "
        "points: at most 5.3e-8 and 8.3e-8 from the float64 value); the cut at −ln 2 "
        "(Mächler 2012) is where neither loses precision, not a boundary of correctness",
}

SPLIT = {
    "x_split_of__mutmut_5": "codec names are case-insensitive: 'UTF-8' is 'utf-8'",
    "x_split_of__mutmut_11": _BIG_ENDIAN,
}

ENCODINGS = {
    "x_importance_weights__mutmut_3": _FLOAT64,
    "x_importance_weights__mutmut_11": _FLOAT64,
    "x_importance_weights__mutmut_22":
        "the exponent of a padding entry is multiplied by its 0 draws (w = 0 x e^1 = 0)",
}

CHECKS = {
    "x_manifest_fields__mutmut_15":
        "every branch of the if/elif/else chain below assigns `problem`; its first value is "
        "never read",
    "x__variable_lengths__mutmut_29":
        "label_counts was already checked for nulls, naming `where`, by the per-position loop "
        "just above, so this second call never raises and its `where` is never shown",
    "x__variable_lengths__mutmut_35":
        "zero_copy_only matters only for arrays with nulls; the nulls of label_counts (unsigned "
        "integers) were refused above",
    "x__variable_lengths__mutmut_36": "as mutant 35: a null-free integer array converts without "
                                      "a copy",
    "x__variable_lengths__mutmut_67": _RESHAPE,
    "x__format13_columns__mutmut_17":
        "zero_copy_only=None is falsy like False: the values are copied when they must be "
        "(booleans are bit-packed)",
    "x__format13_columns__mutmut_43": _RESHAPE,
    "x__segment_order__mutmut_34":
        "step > 1 means the next sample number exceeds the previous one (>= 0) by 2 or more, "
        "so it is neither 0 nor 1: both conditions hold alike",
}

VALIDATE = {
    "x__first_row__mutmut_2": _FLOOR,
    "x_check_table__mutmut_70": _FLOOR,
    "x_check_table__mutmut_16": _SCHEMA,
    "x_check_table__mutmut_18": _SCHEMA,
    "x_check_table__mutmut_32": _SCHEMA,
    "x_check_table__mutmut_34": _SCHEMA,
    "x_check_table__mutmut_44": _SCHEMA,
    "x_check_table__mutmut_46": _SCHEMA,
    "x_check_table__mutmut_57": _SCHEMA,
    "x_check_table__mutmut_59": _SCHEMA,
    "x_check_table__mutmut_38": "np.full with an int fill value is int64 by default",
    "x_check_table__mutmut_41": "as mutant 38",
    "x_check_table__mutmut_22": _UNREACHABLE_SIZES,
    "x_check_table__mutmut_61": _UNREACHABLE_SIZES,
    "x_check_table__mutmut_62": _UNREACHABLE_SIZES,
    "x_check_table__mutmut_66": _UNREACHABLE_SIZES,
    "x_check_table__mutmut_110":
        "LOGPROB_SLACK has every encoding of the format (manifest_fields refuses any other), so "
        "the default of .get is never used",
    "x_check_table__mutmut_112": "as mutant 110",
    "x_check_table__mutmut_113": "as mutant 110",
    "x__duplicates__mutmut_2":
        "pos·V − id is as unique per (position, id) as pos·V + id while 0 <= id < V, which "
        "holds whenever this check runs (ids out of range are reported instead)",
    "x__duplicates__mutmut_6":
        "an unstable sort only changes which of two equal keys is flagged; both are entries of "
        "the same position, so the same row is named",
    "x__duplicates__mutmut_8": "as mutant 6",
    "x__duplicates__mutmut_10": "numpy reads the sort kind case-insensitively",
    "x__duplicates__mutmut_13":
        "a float array of 0s and 1s instead of booleans: .any() and np.flatnonzero read it "
        "the same",
    "x__duplicates__mutmut_15": "as mutant 13",
    "x__mode_problems__mutmut_19": _FLOAT64,
    "x__mode_problems__mutmut_5":
        "without a loss mask every position holds >= 1 entry (label_counts in [1, k] checked by "
        "row_lengths, k >= 1 for top-k), so counts > 0 is all true, as the ones are",
    "x__mode_problems__mutmut_31": _SCHEMA,
    "x__mode_problems__mutmut_33": _SCHEMA,
    "x__mode_problems__mutmut_48": "the stored log-norm is float32; isfinite of it is the same",
    "x__mode_problems__mutmut_50": "as mutant 48",
    "x__rank_ordered__mutmut_6":
        "without the mask, padding ids hold the running sum of deltas instead of 0: " + _PADDING,
    "x__rank_ordered__mutmut_8": "as mutant 6",
    "x__rank_ordered__mutmut_21":
        "padding deltas follow the real ones, so the running sum at real entries is the same, "
        "and " + _PADDING,
    "x__rank_ordered__mutmut_34": "the fill of padding log-probabilities: " + _PADDING,
    "x__rank_ordered__mutmut_41": "as mutant 34",
    "x_validate_dataset__mutmut_17": _DEFAULT + " (verify=True)",
}

_ARROW_TYPE = ("pa.array infers the same Arrow type from the numpy dtype the values were just "
               "cast to (or the schema's), so naming it again changes nothing")
_CAST = ("the values are converted to the column's Arrow type anyway (pa.array casts them; "
         "integers and float32 values survive the round trip unchanged)")
_PICKLE = ("these arrays are numeric, never objects: allow_pickle only matters for object "
           "arrays")
_COPY = "a copy instead of a view holds the same values"
_UNSTABLE_PADDING = ("ids within a position are distinct, so only padding keys tie, and "
                     "padding is dropped (ragged.pack) before anything is written")

WRITER = {
    "x__list_column__mutmut_5": _RESHAPE,
    "x__list_column__mutmut_9": "an integral float width gives the same int32 offsets",
    "x__list_column__mutmut_10": "with 0 rows the offsets are [0] whatever the width",
    "x__list_column__mutmut_13": _ARROW_TYPE,
    "x__list_column__mutmut_15": _ARROW_TYPE,
    "x__list_column__mutmut_18": _CAST,
    "x__list_column__mutmut_20": _CAST,
    "x__list_column__mutmut_28": _ARROW_TYPE,
    "x__list_column__mutmut_30": _ARROW_TYPE,
    "x__ragged_column__mutmut_3": _ARROW_TYPE + " (ragged.row_offsets returns int32)",
    "x__ragged_column__mutmut_5": _ARROW_TYPE + " (ragged.row_offsets returns int32)",
    "x__ragged_column__mutmut_12": _ARROW_TYPE,
    "x__ragged_column__mutmut_14": _ARROW_TYPE,
    "x__variable_columns__mutmut_2": _ARROW_TYPE,
    "x__variable_columns__mutmut_4": _CAST,
    "x__variable_columns__mutmut_21": _ARROW_TYPE,
    "x__variable_columns__mutmut_27": _ARROW_TYPE,
    "x__id_ordered__mutmut_33":
        "without the mask, padding deltas are not zeroed, but ragged.pack drops padding "
        "before it is written",
    "x__id_ordered__mutmut_35": "as mutant 33",
    "x__write_parquet__mutmut_9": "pyarrow reads the codec name case-insensitively",
    "x_build_table__mutmut_16": _ARROW_TYPE,
    "x_build_table__mutmut_20": _CAST,
    "x_build_table__mutmut_23": "pa.array infers list<string> from lists of str",
    "x_build_table__mutmut_25": "as mutant 23",
    "x_build_table__mutmut_33": "_variable_columns does not use its rows argument",
    "x_build_table__mutmut_37": _ARROW_TYPE,
    "x_build_table__mutmut_41": _ARROW_TYPE,
    "x_build_table__mutmut_45": _CAST,
    "x_build_table__mutmut_50": _ARROW_TYPE,
    "x_build_table__mutmut_61": _ARROW_TYPE,
    "x_build_table__mutmut_65": _CAST,
    "x_build_table__mutmut_69": _ARROW_TYPE,
    "x_build_table__mutmut_73": _CAST,
    "x_build_table__mutmut_85": _ARROW_TYPE,
    "x_build_table__mutmut_89": _CAST,
    "x_build_table__mutmut_98": _ARROW_TYPE,
    "x_build_table__mutmut_102": _CAST,
    "x_build_table__mutmut_106": _ARROW_TYPE,
    "x_build_table__mutmut_110": _CAST + " (0.0/1.0 become false/true)",
    "x_build_table__mutmut_114": _ARROW_TYPE,
    "x_build_table__mutmut_118": _CAST,
    "x_build_table__mutmut_120":
        "the columns are built in the schema's order and types, so the inferred schema is "
        "S.arrow_schema(spec)",
    "x_build_table__mutmut_122": "as mutant 120",
    "x_masked__mutmut_7": "np.full with an int fill is int64; counts are cast to their Arrow "
                          "type when written",
    "x_masked__mutmut_10": "as mutant 7",
    "x_masked__mutmut_12":
        "log_norm is only written for tempered sampled labels, which always carry one; "
        "otherwise the (now object) array is never read",
    "x_masked__mutmut_37": "the tail is cast to float32 when its column is built",
    "x_shard_record__mutmut_18": _FLOAT64,
    "x_shard_record__mutmut_35": "zero_copy_only=None is falsy like False",
}

READER = {
    "x__flat_values__mutmut_3": "zero_copy_only=None is falsy like False",
    "x__flat_values__mutmut_8": _COPY,
    "x__flat_values__mutmut_10": _COPY,
    "x__flat_values__mutmut_11": _COPY,
    "x__flat_values__mutmut_12": _COPY,
    "x_decode_batch__mutmut_24": "the loss_mask column converts to numpy booleans already",
    "x_decode_batch__mutmut_26": "as mutant 24",
    "x_decode_batch__mutmut_99": _SCHEMA,
    "x_decode_batch__mutmut_101": _SCHEMA,
    "x__decode_variable__mutmut_4": _SCHEMA,
    "x__decode_variable__mutmut_6": _SCHEMA,
    "x__decode_variable__mutmut_69": _SCHEMA + " (importance_weights converts draws to float64)",
    "x__decode_variable__mutmut_71": "as mutant 69",
    "x__decode_variable__mutmut_117": _SCHEMA,
    "x__decode_variable__mutmut_119": _SCHEMA,
    "x__decode_variable__mutmut_90":
        "without the mask, padding ids hold the running sum of deltas instead of 0: " + _PADDING,
    "x__decode_variable__mutmut_92": "as mutant 90",
    "xǁSoftLabelDatasetǁ_shard__mutmut_18":
        "rowgroups.check_entry has refused an entry holding some but not all of the three "
        "index fields, so any one of them tells whether there is an index",
    "xǁSoftLabelDatasetǁopen_verified__mutmut_22": _LOCAL_GUARD,
    "xǁSoftLabelDatasetǁopen_verified__mutmut_30": _LOCAL_GUARD,
    "xǁSoftLabelDatasetǁopen_verified__mutmut_26": _DEFAULT + " (mode 'rb')",
}

SORTEDIDS = {
    "x_sort_by_id__mutmut_2":
        "float64 keys order ids below 2^53 exactly as int64 keys do, and the padding key "
        "still sorts last",
    "x_sort_by_id__mutmut_14": _UNSTABLE_PADDING,
    "x_sort_by_id__mutmut_16": _DEFAULT + " (axis=-1)",
    "x_sort_by_id__mutmut_17": _UNSTABLE_PADDING,
    "x_sort_by_id__mutmut_21": "numpy reads the sort kind case-insensitively",
    "x_sort_by_id__mutmut_28": _DEFAULT + " (axis=-1 since NumPy 2.3)",
    "x_deltas__mutmut_6": _DEFAULT + " (axis=-1)",
    "x_ids_from_deltas__mutmut_14": "an id of exactly 2^31 − 1 is replaced by itself",
    "x_rank_order__mutmut_5": "the log-probabilities it is given are float32 already",
    "x_rank_order__mutmut_7": "as mutant 5",
    "x_rank_order__mutmut_23": _DEFAULT + " (axis=-1)",
    "x_rank_order__mutmut_32": _DEFAULT + " (axis=-1 since NumPy 2.3)",
    "x_rank_order__mutmut_42": _DEFAULT + " (axis=-1 since NumPy 2.3)",
}

PACKING = {
    "x__cut_rows__mutmut_24": _BUFFER + ": s < lo + seq_len holds with or without equality",
    "x__cut_rows__mutmut_26":
        "a document in the buffer ends after the first uncut row starts, and the document "
        "just added ends at or after the cut, so e == lo never happens for a row",
    "x__cut_rows__mutmut_33":
        "a start of 1 instead of 0 still satisfies s < lo + seq_len (seq_len >= 2, "
        "pipeline/config/stages.py)",
    "x__cut_rows__mutmut_35":
        "a document that ends exactly at the cut stays in the buffer with end 0, which no "
        "later row (lo >= 0, e > lo) ever names",
    "x_iter_shard_inputs__mutmut_58": "buf.rows[:None] is every row, as [:len(buf.rows)]",
    "xǁShardSpillǁput__mutmut_17": _PICKLE,
    "xǁShardSpillǁput__mutmut_20": _PICKLE,
    "xǁShardSpillǁput__mutmut_27": _PICKLE,
    "xǁShardSpillǁput__mutmut_40": _PICKLE,
    "xǁShardSpillǁput__mutmut_43": _PICKLE,
    "xǁShardSpillǁput__mutmut_45": _PICKLE,
    "xǁShardSpillǁget__mutmut_9": _PICKLE,
    "xǁShardSpillǁget__mutmut_11": _PICKLE,
    "xǁShardSpillǁget__mutmut_15": _PICKLE,
    "xǁShardSpillǁget__mutmut_27": _PICKLE,
    "xǁShardSpillǁget__mutmut_29": _PICKLE,
    "xǁShardSpillǁget__mutmut_30": _PICKLE,
}

EQUIVALENT: dict[str, str] = {
    f"pipeline.{module}.{name}": f"Equivalent: {reason}."
    for module, table in (("labeling.forward", FORWARD), ("labeling.modes", MODES),
                          ("training.losses", LOSSES),
                          ("labeling.split", SPLIT), ("softlabels.encodings", ENCODINGS),
                          ("softlabels.checks", CHECKS), ("softlabels.validate", VALIDATE),
                          ("softlabels.writer", WRITER), ("softlabels.reader", READER),
                          ("softlabels.sortedids", SORTEDIDS), ("labeling.packing", PACKING))
    for name, reason in table.items()
}
