"""Coarse families of the 1000 ImageNet-1k classes (torchvision's class order), for experiments
that need a label coarser than the class: linear probes per layer, unit semantics, nearest
neighbours (Zeiler & Fergus 2014 Sec. 5; Zhou et al. 2015; Krizhevsky et al. 2012 Fig. 4).

How the table was built. WordNet itself is not available offline (nltk's and `wn`'s data are
downloads, not packages), so the table is written out here, by hand, from two facts:

- ImageNet-1k's classes are ordered by WordNet id, and the WordNet ids of the natural classes come
  in contiguous blocks of the hierarchy: 0-6 fish, 7-24 birds, 25-32 amphibians, 33-68 reptiles,
  69-79 arachnids and other arthropods, 80-100 birds, 101-106 tusker and monotremes/marsupials,
  107-126 marine invertebrates, 127-146 birds, 147-150 marine mammals, 151-268 dogs, 269-299
  wolves, foxes, cats, bears and mongooses, 300-326 insects, 327-329 echinoderms, 330-388 rabbits,
  rodents, hoofed animals, mustelids, primates, elephants and pandas, 389-397 fish, 924-969 food
  and drink, 970-980 geological formations, 981-983 people, 984-998 plants and fungi.
- Indices 398-923 (and 968, 999) are artifacts in alphabetical order of their WordNet lemma; each
  was assigned by reading its class name (cnnviz.models's class list, as torchvision's ImageNet
  weights list it) to one of nine artifact families. Where a name is ambiguous the ImageNet
  meaning was used (e.g. 417 "balloon" is a hot-air balloon: vehicles; 681 "notebook" is a
  notebook computer: devices; 724 "pirate" is a pirate ship: vehicles; 738 "pot" is a flowerpot).
  A few natural things among them follow their kind: 599 honeycomb goes to food, 815 spider web
  to invertebrates.

These are 18 families of 14 to 118 classes; they are coarser than WordNet's own top levels
(which would put dogs among mammals and many artifacts under "instrumentality") and were chosen to
be visually coherent groups. `family(i)` gives a class's family, `families()` the family names
in a fixed order, `family_index(i)` its position there, `members(name)` the classes of a family.
"""

from __future__ import annotations

from functools import lru_cache

NUM_CLASSES = 1000

# (family, class indices as ranges "a-b" and single indices)
_TABLE = (
    ("dogs",  # 118 classes
     "151-268"),
    ("other mammals",  # 100 classes
     "101-106 147-150 269-299 330-388"),
    ("birds",  # 59 classes
     "7-24 80-100 127-146"),
    ("reptiles & amphibians",  # 44 classes
     "25-68"),
    ("fish",  # 16 classes
     "0-6 389-397"),
    ("invertebrates",  # 62 classes
     "69-79 107-126 300-329 815"),
    ("plants & fungi",  # 15 classes
     "984-998"),
    ("food",  # 46 classes
     "599 924-967 969"),
    ("landscapes & people",  # 14 classes
     "970-983"),
    ("vehicles",  # 78 classes
     "403-405 407-408 417 436 444 450 466 468 472 475 479 484 510-511 535 537 547 554-555 561 565 569 "
     "573 575-576 581 586 595 603 609 612 625 627-628 654 656 660-661 665 670-671 675 686 690 694 705 "
     "717 724 734 751 757 779-780 785 802-803 812 814 817 820 829 833 847 856 864 866-867 870-871 874 "
     "880 895 908 913-914"),
    ("buildings & structures",  # 76 classes
     "406 410 415 421 424-425 437 442 448-449 454 458 460 467 483 489 497-498 500 509 525 536 538 540 "
     "557 562 580 582 624 634 637 640 645-646 649 663 668 672 682 698 704 706 708 716 718 727 733 743 "
     "755 762 788-789 799 807 819 821 825 832 835 839 853-854 858 860 863 865 873 877 884 888 900 904 "
     "912 915 919-920"),
    ("furniture & household",  # 86 classes
     "418-419 423 431 434-435 446 453 470 492-493 495 507 516 520 523 526 532-533 539 545 548-549 551 "
     "553 556 559 563-564 585 589 606-607 619 623 626 629 631 644 648 669 674 691 695 700 703 710-711 "
     "721 738 741 749-750 753 765 767 771-772 786 794 797 804 811 830-831 838 840 846 855 857 861-862 "
     "879 882 885 894 896-897 902 905 911 917-918 921-922 999"),
    ("kitchenware & containers",  # 62 classes
     "412 427 438 440-441 455 463 469 473 478 499 503-505 512 519 521 534 544 550 567 572 588 618 647 "
     "651 653 659 666 680 692 709 712 720 725 728-729 737 756 760 766 773 790-791 809 813 827-828 849 "
     "859 868 876 883 891 898-899 901 907 909-910 923 968"),
    ("clothing & accessories",  # 70 classes
     "399-400 411 414 433 439 443 445 451-452 457 459 461 464-465 474 490 496 501-502 514-515 518 524 "
     "529 552 568 570 578 584 591 601 608 610 614 617 630 636 638-639 643 652 655 658 667 678-679 689 "
     "697 715 735 748 770 774-775 793 796 806 808 824 834 836-837 841-842 869 887 893 903 906"),
    ("devices & electronics",  # 58 classes
     "398 409 426 447 480-482 485 487 508 527-528 530-531 571 590 592 598 604-605 613 620 622 632-633 "
     "635 650 662 664 673 681 685 688 707 713 732 742 745 754 759 761 778 782 798 800 810 818 823 826 "
     "844-845 848 851 872 878 886 892 916"),
    ("tools & weapons",  # 36 classes
     "413 428 456 462 471 477 488 491 506 517 583 587 596-597 600 616 621 657 676-677 696 726 730-731 "
     "739-740 744 763-764 769 777 783-784 787 792 816"),
    ("musical instruments",  # 28 classes
     "401-402 420 432 486 494 513 541-542 546 558 566 577 579 593-594 641-642 683-684 687 699 714 776 "
     "822 875 881 889"),
    ("sports & toys",  # 32 classes
     "416 422 429-430 476 522 543 560 574 602 611 615 693 701-702 719 722-723 736 746-747 752 758 768 "
     "781 795 801 805 843 850 852 890"),
)


@lru_cache(maxsize=1)
def _lookup() -> tuple[tuple[str, ...], tuple[int, ...]]:
    names, of = [], [-1] * NUM_CLASSES
    for k, (name, spec) in enumerate(_TABLE):
        names.append(name)
        for part in spec.split():
            lo, _, hi = part.partition("-")
            for i in range(int(lo), int(hi or lo) + 1):
                if of[i] != -1:
                    raise AssertionError(f"class {i} is in two families")
                of[i] = k
    if -1 in of:
        raise AssertionError(f"class {of.index(-1)} has no family")
    return tuple(names), tuple(of)


def families() -> list[str]:
    """The family names, in a fixed order (natural kinds first, then artifacts)."""
    return list(_lookup()[0])


def _check(class_index) -> int:
    try:
        i = int(class_index)
    except (TypeError, ValueError):
        raise ValueError(f"class index {class_index!r} is not a whole number") from None
    if i != class_index or not 0 <= i < NUM_CLASSES:
        raise ValueError(f"class index {class_index!r} is not an ImageNet-1k class (0..{NUM_CLASSES - 1})")
    return i


def family_index(class_index: int) -> int:
    """Position of `class_index`'s family in `families()`."""
    return _lookup()[1][_check(class_index)]


def family(class_index: int) -> str:
    """The coarse family of ImageNet-1k class `class_index` (0..999, torchvision's order)."""
    return _lookup()[0][family_index(class_index)]


def members(name: str) -> list[int]:
    """The class indices of family `name`."""
    names, of = _lookup()
    if name not in names:
        raise ValueError(f"unknown family {name!r}; families: {', '.join(names)}")
    k = names.index(name)
    return [i for i in range(NUM_CLASSES) if of[i] == k]


def chance(class_indices) -> float:
    """Probability that two classes drawn independently from `class_indices` (with replacement)
    share a family: the sum over families of the squared share of the classes in it."""
    idx = [family_index(i) for i in class_indices]
    if not idx:
        return float("nan")
    counts = [idx.count(k) for k in set(idx)]
    return sum((c / len(idx)) ** 2 for c in counts)
