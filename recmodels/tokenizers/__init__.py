"""Item tokenizers: semantic IDs (RQ-KMeans code tuples), the item vectors they are built from,
and the prefix trie of real items that constrained decoding walks."""
from recmodels.tokenizers.item_vectors import ItemVectorConfig, ItemVectors, build_item_vectors
from recmodels.tokenizers.semantic_ids import SemanticIdConfig, SemanticIds, TokenLayout, build_semantic_ids
from recmodels.tokenizers.trie import ItemTrie

__all__ = ["ItemVectorConfig", "ItemVectors", "build_item_vectors", "SemanticIdConfig", "SemanticIds",
           "TokenLayout", "build_semantic_ids", "ItemTrie"]
